//! XEP-0050 ad-hoc commands: the admin command grammar as XMPP clients (Gajim,
//! Conversations, Psi) show it in their menus.
//!
//! Each verb of the grammar is one command node on the component's JID, listed by
//! disco#items on the node `http://jabber.org/protocol/commands`. A verb without
//! arguments (`help`, `bridges`, `status`) runs at once and completes with the
//! gateway's answer as a note. A verb with arguments first answers `executing` with a
//! session id and a jabber:x:data form (one text-single field per argument); the
//! submitted form becomes the same command line a person would type in a chat
//! (`link lobby #room:server`), which the adapter hands to the gateway, and the answer
//! becomes the completing note. Nothing here does I/O: the adapter parses requests,
//! asks [`Sessions::step`] what to do, and wraps the answer with [`result_iq`] or
//! [`error_iq`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use minidom::{Element, ElementBuilder};

use crate::inbound::NS_CLIENT;
use crate::outbound::Attr;

/// The ad-hoc commands namespace, also the disco node that lists the commands.
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
/// Data forms (XEP-0004).
pub const NS_DATA: &str = "jabber:x:data";
/// Service discovery: items.
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// Service discovery: info.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// How long a form may stay open before its session is forgotten.
pub const SESSION_TTL: Duration = Duration::from_secs(600);
/// Most forms open at once; the oldest is forgotten beyond this.
pub const MAX_SESSIONS: usize = 256;

/// One argument of a verb, as a form field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's `var`.
    pub var: &'static str,
    /// What the client shows beside it.
    pub label: &'static str,
    /// Whether the command needs it.
    pub required: bool,
    /// Free text (several words, the last argument) rather than one word.
    pub free_text: bool,
}

/// One verb of the admin grammar as a command node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verb {
    /// The node, which is also the verb typed in a chat.
    pub node: &'static str,
    /// The command's name in clients' menus.
    pub name: &'static str,
    /// Its arguments, in the order the command line takes them.
    pub fields: &'static [Field],
}

const BRIDGE: Field = Field {
    var: "bridge",
    label: "Bridge",
    required: true,
    free_text: false,
};
const ROOM: Field = Field {
    var: "room",
    label: "Room (#alias:server, room@muc.domain or network/#channel)",
    required: true,
    free_text: false,
};
const USER: Field = Field {
    var: "user",
    label: "User (@user:server, user@domain or network/nick)",
    required: true,
    free_text: false,
};
const REASON: Field = Field {
    var: "reason",
    label: "Reason (optional)",
    required: false,
    free_text: true,
};

/// Every verb of the grammar, in the order clients list them.
pub const VERBS: &[Verb] = &[
    Verb {
        node: "help",
        name: "Help: the commands",
        fields: &[],
    },
    Verb {
        node: "bridges",
        name: "Bridges and their rooms",
        fields: &[],
    },
    Verb {
        node: "status",
        name: "Gateway status",
        fields: &[],
    },
    Verb {
        node: "link",
        name: "Link a room into a bridge",
        fields: &[BRIDGE, ROOM],
    },
    Verb {
        node: "unlink",
        name: "Unlink a room from a bridge",
        fields: &[BRIDGE, ROOM],
    },
    Verb {
        node: "close",
        name: "Close a bridge",
        fields: &[BRIDGE],
    },
    Verb {
        node: "kick",
        name: "Kick a user",
        fields: &[USER, REASON],
    },
    Verb {
        node: "ban",
        name: "Ban a user everywhere",
        fields: &[USER, REASON],
    },
    Verb {
        node: "unban",
        name: "Lift a ban",
        fields: &[USER],
    },
];

/// The verb whose node is `node`.
pub fn verb(node: &str) -> Option<&'static Verb> {
    VERBS.iter().find(|v| v.node == node)
}

/// The disco#items answer for the commands node: one item per verb on `jid` (the
/// address the query was sent to).
pub fn command_items(jid: &str) -> Element {
    let mut q = Element::builder("query", NS_DISCO_ITEMS).a("node", NS_COMMANDS);
    for v in VERBS {
        q = q.append(
            Element::builder("item", NS_DISCO_ITEMS)
                .a("jid", jid)
                .a("node", v.node)
                .a("name", v.name)
                .build(),
        );
    }
    q.build()
}

/// The disco#info answer for a commands node: the command list itself, or one
/// command. None for any other node.
pub fn node_info(node: &str) -> Option<Element> {
    let (kind, name) = if node == NS_COMMANDS {
        ("command-list", "Junction admin commands")
    } else {
        ("command-node", verb(node)?.name)
    };
    let feature = |var: &str| {
        Element::builder("feature", NS_DISCO_INFO)
            .a("var", var)
            .build()
    };
    Some(
        Element::builder("query", NS_DISCO_INFO)
            .a("node", node)
            .append(
                Element::builder("identity", NS_DISCO_INFO)
                    .a("category", "automation")
                    .a("type", kind)
                    .a("name", name)
                    .build(),
            )
            .append(feature(NS_COMMANDS))
            .append(feature(NS_DATA))
            .build(),
    )
}

/// What the requester asks the command to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start, or submit the form (`execute`, or no action).
    Execute,
    /// Submit the form and finish.
    Complete,
    /// Abandon the command.
    Cancel,
    /// `next` or `prev`: our commands have one stage only.
    Move,
    /// Something XEP-0050 does not define.
    Unknown,
}

/// A `<command/>` request, as read from an IQ set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The command node.
    pub node: String,
    /// The requested action.
    pub action: Action,
    /// The session it continues, if any.
    pub sessionid: Option<String>,
    /// The submitted form's values by field (first value of each), if a form came.
    pub form: Option<HashMap<String, String>>,
}

/// Reads the `<command/>` of an IQ set; None when it carries none.
pub fn parse_request(iq: &Element) -> Option<Request> {
    if iq.attr("type") != Some("set") {
        return None;
    }
    let c = iq.get_child("command", NS_COMMANDS)?;
    let action = match c.attr("action") {
        None | Some("execute") => Action::Execute,
        Some("complete") => Action::Complete,
        Some("cancel") => Action::Cancel,
        Some("next" | "prev") => Action::Move,
        Some(_) => Action::Unknown,
    };
    let form = c.get_child("x", NS_DATA).map(|x| {
        let mut values = HashMap::new();
        if x.attr("type") == Some("cancel") {
            return values;
        }
        for f in x.children().filter(|f| f.is("field", NS_DATA)) {
            let Some(var) = f.attr("var") else { continue };
            let value = f
                .children()
                .filter(|v| v.is("value", NS_DATA))
                .map(Element::text)
                .collect::<Vec<_>>()
                .join(" ");
            values.insert(var.to_string(), value);
        }
        values
    });
    let cancelled_form = c
        .get_child("x", NS_DATA)
        .is_some_and(|x| x.attr("type") == Some("cancel"));
    Some(Request {
        node: c.attr("node").unwrap_or_default().to_string(),
        action: if cancelled_form {
            Action::Cancel
        } else {
            action
        },
        sessionid: c
            .attr("sessionid")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        form,
    })
}

/// A refusal, as a stanza error with XEP-0050's specific condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The error type (`modify`, `cancel`, `auth`).
    pub kind: &'static str,
    /// The RFC 6120 condition.
    pub condition: &'static str,
    /// XEP-0050's application condition, if any.
    pub specific: Option<&'static str>,
    /// Text for the person.
    pub text: &'static str,
}

impl Refusal {
    /// The node names no command.
    pub const UNKNOWN_NODE: Refusal = Refusal {
        kind: "modify",
        condition: "bad-request",
        specific: None,
        text: "No such command.",
    };
    /// The session is unknown, expired, or someone else's.
    pub const BAD_SESSION: Refusal = Refusal {
        kind: "modify",
        condition: "bad-request",
        specific: Some("bad-sessionid"),
        text: "No such command session (it may have expired).",
    };
    /// The action is not one this command takes.
    pub const BAD_ACTION: Refusal = Refusal {
        kind: "modify",
        condition: "bad-request",
        specific: Some("bad-action"),
        text: "This command has one step only.",
    };
    /// The action is unknown.
    pub const MALFORMED_ACTION: Refusal = Refusal {
        kind: "modify",
        condition: "bad-request",
        specific: Some("malformed-action"),
        text: "Unknown action.",
    };
    /// The form lacks a required value or has several words where one is wanted.
    pub const BAD_PAYLOAD: Refusal = Refusal {
        kind: "modify",
        condition: "bad-request",
        specific: Some("bad-payload"),
        text: "The form is incomplete, or a field that takes one word has several.",
    };
    /// The sender may not use commands (not a person on the network).
    pub const FORBIDDEN: Refusal = Refusal {
        kind: "auth",
        condition: "forbidden",
        specific: None,
        text: "Commands are for people on the network.",
    };
}

/// What the adapter should do with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Answer at once with this `<command/>`.
    Answer(Element),
    /// Answer with this error.
    Refuse(Refusal),
    /// Send `text` to the gateway as a command; answer with [`completed`] of its reply.
    Run {
        /// The command line, as it would be typed in a chat.
        text: String,
        /// The command node.
        node: String,
        /// The session id to answer with.
        sessionid: String,
    },
}

/// An open form.
#[derive(Clone, Debug)]
struct Open {
    node: &'static str,
    requester: String,
    since: Instant,
}

/// The forms sent and not yet submitted or cancelled.
#[derive(Debug, Default)]
pub struct Sessions {
    open: HashMap<String, Open>,
    next: u64,
}

impl Sessions {
    /// No open forms.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many forms are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no form is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn new_id(&mut self, node: &str) -> String {
        self.next += 1;
        let r: u64 = rand::random();
        format!("{node}:{r:016x}-{}", self.next)
    }

    /// Decides what a request from `requester` (a full JID) means at `now`.
    pub fn step(&mut self, req: &Request, requester: &str, now: Instant) -> Step {
        self.open
            .retain(|_, o| now.saturating_duration_since(o.since) < SESSION_TTL);
        let Some(verb) = verb(&req.node) else {
            return Step::Refuse(Refusal::UNKNOWN_NODE);
        };
        match &req.sessionid {
            None => self.start(verb, req, requester, now),
            Some(sid) => {
                let Some(open) = self.open.get(sid) else {
                    return Step::Refuse(Refusal::BAD_SESSION);
                };
                if open.node != verb.node || open.requester != requester {
                    return Step::Refuse(Refusal::BAD_SESSION);
                }
                match req.action {
                    Action::Cancel => {
                        self.open.remove(sid);
                        Step::Answer(canceled(verb.node, sid))
                    }
                    Action::Move => Step::Refuse(Refusal::BAD_ACTION),
                    Action::Unknown => Step::Refuse(Refusal::MALFORMED_ACTION),
                    Action::Execute | Action::Complete => {
                        let Some(values) = &req.form else {
                            return Step::Refuse(Refusal::BAD_PAYLOAD);
                        };
                        match command_line(verb, values) {
                            Some(text) => {
                                self.open.remove(sid);
                                Step::Run {
                                    text,
                                    node: verb.node.to_string(),
                                    sessionid: sid.clone(),
                                }
                            }
                            None => Step::Refuse(Refusal::BAD_PAYLOAD),
                        }
                    }
                }
            }
        }
    }

    fn start(&mut self, verb: &'static Verb, req: &Request, requester: &str, now: Instant) -> Step {
        let sid = self.new_id(verb.node);
        match req.action {
            Action::Cancel => return Step::Answer(canceled(verb.node, &sid)),
            Action::Move => return Step::Refuse(Refusal::BAD_ACTION),
            Action::Unknown => return Step::Refuse(Refusal::MALFORMED_ACTION),
            Action::Execute | Action::Complete => {}
        }
        if verb.fields.is_empty() {
            return Step::Run {
                text: verb.node.to_string(),
                node: verb.node.to_string(),
                sessionid: sid,
            };
        }
        // A client that sends the filled form at once (it knew the fields) is served
        // in one round trip.
        if let Some(text) = req.form.as_ref().and_then(|f| command_line(verb, f)) {
            return Step::Run {
                text,
                node: verb.node.to_string(),
                sessionid: sid,
            };
        }
        if self.open.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, o)| o.since)
                .map(|(k, _)| k.clone())
            {
                self.open.remove(&oldest);
            }
        }
        self.open.insert(
            sid.clone(),
            Open {
                node: verb.node,
                requester: requester.to_string(),
                since: now,
            },
        );
        Step::Answer(executing(verb, &sid))
    }
}

/// The command line a submitted form stands for: the verb and its arguments in order,
/// or None when a required value is missing or a one-word field holds several words.
pub fn command_line(verb: &Verb, values: &HashMap<String, String>) -> Option<String> {
    let mut line = verb.node.to_string();
    for f in verb.fields {
        let v = values.get(f.var).map(|v| v.trim()).unwrap_or_default();
        if v.is_empty() {
            if f.required {
                return None;
            }
            continue;
        }
        if f.free_text {
            let words: Vec<&str> = v.split_whitespace().collect();
            line.push(' ');
            line.push_str(&words.join(" "));
        } else {
            if v.chars().any(char::is_whitespace) {
                return None;
            }
            line.push(' ');
            line.push_str(v);
        }
    }
    Some(line)
}

fn command(node: &str, sessionid: &str, status: &str) -> ElementBuilder {
    Element::builder("command", NS_COMMANDS)
        .a("node", node)
        .a("sessionid", sessionid)
        .a("status", status)
}

/// The first answer of a verb with arguments: its form.
pub fn executing(verb: &Verb, sessionid: &str) -> Element {
    let mut x = Element::builder("x", NS_DATA)
        .a("type", "form")
        .append(Element::builder("title", NS_DATA).append(verb.name))
        .append(Element::builder("instructions", NS_DATA).append(format!(
            "The same as typing `{}` to the gateway.",
            usage(verb)
        )));
    for f in verb.fields {
        let mut field = Element::builder("field", NS_DATA)
            .a("var", f.var)
            .a("type", "text-single")
            .a("label", f.label);
        if f.required {
            field = field.append(Element::builder("required", NS_DATA).build());
        }
        x = x.append(field.build());
    }
    command(verb.node, sessionid, "executing")
        .append(
            Element::builder("actions", NS_COMMANDS)
                .a("execute", "complete")
                .append(Element::builder("complete", NS_COMMANDS).build())
                .build(),
        )
        .append(x.build())
        .build()
}

/// `link <bridge> <room>`, `kick <user> [reason]`.
fn usage(verb: &Verb) -> String {
    let mut s = verb.node.to_string();
    for f in verb.fields {
        if f.required {
            s.push_str(&format!(" <{}>", f.var));
        } else {
            s.push_str(&format!(" [{}]", f.var));
        }
    }
    s
}

/// The last answer: the gateway's reply as a note (`error` when the gateway could not
/// be asked or did not answer).
pub fn completed(node: &str, sessionid: &str, text: &str, ok: bool) -> Element {
    command(node, sessionid, "completed")
        .append(
            Element::builder("note", NS_COMMANDS)
                .a("type", if ok { "info" } else { "error" })
                .append(text)
                .build(),
        )
        .build()
}

/// The answer to a cancel.
pub fn canceled(node: &str, sessionid: &str) -> Element {
    command(node, sessionid, "canceled").build()
}

fn reply_to(request: &Element, ty: &str) -> ElementBuilder {
    Element::builder("iq", NS_CLIENT)
        .a("type", ty)
        .a("id", request.attr("id").unwrap_or_default())
        .a("from", request.attr("to").unwrap_or_default())
        .a("to", request.attr("from").unwrap_or_default())
}

/// A result IQ answering `request` with `payload`.
pub fn result_iq(request: &Element, payload: Element) -> Element {
    reply_to(request, "result").append(payload).build()
}

/// An error IQ answering `request`.
pub fn error_iq(request: &Element, refusal: Refusal) -> Element {
    let mut e = Element::builder("error", NS_CLIENT)
        .a("type", refusal.kind)
        .append(Element::builder(refusal.condition, NS_STANZAS).build())
        .append(
            Element::builder("text", NS_STANZAS)
                .append(refusal.text)
                .build(),
        );
    if let Some(s) = refusal.specific {
        e = e.append(Element::builder(s, NS_COMMANDS).build());
    }
    reply_to(request, "error").append(e.build()).build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn request(command: &str) -> Element {
        el(&format!(
            "<iq xmlns='jabber:component:accept' type='set' id='q1' \
               from='admin@xmpp.test/pc' to='bridge.xmpp.test'>{command}</iq>"
        ))
    }

    fn run(s: &mut Sessions, command: &str, who: &str) -> Step {
        let r = parse_request(&request(command)).unwrap();
        s.step(&r, who, Instant::now())
    }

    const ADMIN: &str = "admin@xmpp.test/pc";

    fn sessionid(step: &Step) -> String {
        match step {
            Step::Answer(c) => c.attr("sessionid").unwrap().to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_list_names_every_verb_on_the_address_asked() {
        let q = command_items("bridge.xmpp.test");
        assert_eq!(q.attr("node"), Some(NS_COMMANDS));
        let nodes: Vec<&str> = q
            .children()
            .inspect(|i| assert_eq!(i.attr("jid"), Some("bridge.xmpp.test")))
            .filter_map(|i| i.attr("node"))
            .collect();
        assert_eq!(
            nodes,
            ["help", "bridges", "status", "link", "unlink", "close", "kick", "ban", "unban"]
        );
        assert!(q.children().all(|i| i.attr("name").is_some()));
        let info = node_info(NS_COMMANDS).unwrap();
        let ident = info.get_child("identity", NS_DISCO_INFO).unwrap();
        assert_eq!(ident.attr("type"), Some("command-list"));
        let info = node_info("link").unwrap();
        let ident = info.get_child("identity", NS_DISCO_INFO).unwrap();
        assert_eq!(ident.attr("category"), Some("automation"));
        assert_eq!(ident.attr("type"), Some("command-node"));
        assert!(node_info("nope").is_none());
    }

    #[test]
    fn requests_are_read() {
        let r = parse_request(&request(
            "<command xmlns='http://jabber.org/protocol/commands' node='status' action='execute'/>",
        ))
        .unwrap();
        assert_eq!(r.node, "status");
        assert_eq!(r.action, Action::Execute);
        assert_eq!(r.sessionid, None);
        assert_eq!(r.form, None);
        let r = parse_request(&request(
            "<command xmlns='http://jabber.org/protocol/commands' node='link' sessionid='s1'>\
               <x xmlns='jabber:x:data' type='submit'>\
                 <field var='bridge'><value>lobby</value></field>\
                 <field var='room'><value>#x:m.test</value></field>\
               </x></command>",
        ))
        .unwrap();
        assert_eq!(r.action, Action::Execute);
        assert_eq!(r.sessionid.as_deref(), Some("s1"));
        let f = r.form.unwrap();
        assert_eq!(f.get("bridge").map(String::as_str), Some("lobby"));
        assert_eq!(f.get("room").map(String::as_str), Some("#x:m.test"));
        for (a, want) in [
            ("cancel", Action::Cancel),
            ("complete", Action::Complete),
            ("next", Action::Move),
            ("prev", Action::Move),
            ("jump", Action::Unknown),
        ] {
            let r = parse_request(&request(&format!(
                "<command xmlns='http://jabber.org/protocol/commands' node='ban' action='{a}'/>"
            )))
            .unwrap();
            assert_eq!(r.action, want, "{a}");
        }
        // A cancelled form is a cancel.
        let r = parse_request(&request(
            "<command xmlns='http://jabber.org/protocol/commands' node='ban' sessionid='s'>\
               <x xmlns='jabber:x:data' type='cancel'/></command>",
        ))
        .unwrap();
        assert_eq!(r.action, Action::Cancel);
        // No command, or not a set.
        assert!(parse_request(&request("<ping xmlns='urn:xmpp:ping'/>")).is_none());
        assert!(parse_request(&el(
            "<iq xmlns='jabber:component:accept' type='get' id='g'>\
               <command xmlns='http://jabber.org/protocol/commands' node='status'/></iq>"
        ))
        .is_none());
    }

    #[test]
    fn a_verb_without_arguments_runs_at_once() {
        let mut s = Sessions::new();
        let step = run(
            &mut s,
            "<command xmlns='http://jabber.org/protocol/commands' node='status' action='execute'/>",
            ADMIN,
        );
        let Step::Run {
            text,
            node,
            sessionid,
        } = step
        else {
            panic!("{step:?}")
        };
        assert_eq!((text.as_str(), node.as_str()), ("status", "status"));
        assert!(s.is_empty(), "nothing to remember");
        let done = completed(
            &node,
            &sessionid,
            "Bridges: 1 (3 rooms).\nmatrix: connected",
            true,
        );
        assert_eq!(done.attr("status"), Some("completed"));
        assert_eq!(done.attr("sessionid"), Some(sessionid.as_str()));
        let note = done.get_child("note", NS_COMMANDS).unwrap();
        assert_eq!(note.attr("type"), Some("info"));
        assert_eq!(note.text(), "Bridges: 1 (3 rooms).\nmatrix: connected");
        let failed = completed(
            &node,
            &sessionid,
            "The gateway did not answer in time.",
            false,
        );
        assert_eq!(
            failed.get_child("note", NS_COMMANDS).unwrap().attr("type"),
            Some("error")
        );
    }

    #[test]
    fn a_verb_with_arguments_asks_with_a_form_then_runs_the_same_line() {
        let mut s = Sessions::new();
        let step = run(
            &mut s,
            "<command xmlns='http://jabber.org/protocol/commands' node='link' action='execute'/>",
            ADMIN,
        );
        let Step::Answer(form) = &step else {
            panic!("{step:?}")
        };
        assert_eq!(form.attr("status"), Some("executing"));
        assert_eq!(form.attr("node"), Some("link"));
        let actions = form.get_child("actions", NS_COMMANDS).unwrap();
        assert!(actions.has_child("complete", NS_COMMANDS));
        let x = form.get_child("x", NS_DATA).unwrap();
        assert_eq!(x.attr("type"), Some("form"));
        let fields: Vec<(&str, &str, bool)> = x
            .children()
            .filter(|f| f.is("field", NS_DATA))
            .map(|f| {
                (
                    f.attr("var").unwrap(),
                    f.attr("type").unwrap(),
                    f.has_child("required", NS_DATA),
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                ("bridge", "text-single", true),
                ("room", "text-single", true)
            ]
        );
        let sid = sessionid(&step);
        assert_eq!(s.len(), 1);
        // Someone else can not continue it.
        let submit = format!(
            "<command xmlns='http://jabber.org/protocol/commands' node='link' sessionid='{sid}' action='complete'>\
               <x xmlns='jabber:x:data' type='submit'>\
                 <field var='bridge'><value> lobby </value></field>\
                 <field var='room'><value>local/#side</value></field>\
               </x></command>"
        );
        assert_eq!(
            run(&mut s, &submit, "eve@xmpp.test/pc"),
            Step::Refuse(Refusal::BAD_SESSION)
        );
        assert_eq!(
            run(&mut s, &submit, ADMIN),
            Step::Run {
                text: "link lobby local/#side".into(),
                node: "link".into(),
                sessionid: sid.clone(),
            }
        );
        assert!(s.is_empty());
        // The session is over now.
        assert_eq!(
            run(&mut s, &submit, ADMIN),
            Step::Refuse(Refusal::BAD_SESSION)
        );
    }

    #[test]
    fn a_bad_form_is_refused_and_the_session_stays() {
        let mut s = Sessions::new();
        let sid = sessionid(&run(
            &mut s,
            "<command xmlns='http://jabber.org/protocol/commands' node='ban'/>",
            ADMIN,
        ));
        let submit = |user: &str| {
            format!(
                "<command xmlns='http://jabber.org/protocol/commands' node='ban' sessionid='{sid}'>\
                   <x xmlns='jabber:x:data' type='submit'>\
                     <field var='user'><value>{user}</value></field>\
                     <field var='reason'><value>spam\n and  flood</value></field>\
                   </x></command>"
            )
        };
        assert_eq!(
            run(&mut s, &submit(""), ADMIN),
            Step::Refuse(Refusal::BAD_PAYLOAD)
        );
        assert_eq!(
            run(&mut s, &submit("a b"), ADMIN),
            Step::Refuse(Refusal::BAD_PAYLOAD)
        );
        let next = format!(
            "<command xmlns='http://jabber.org/protocol/commands' node='ban' sessionid='{sid}' action='next'/>"
        );
        assert_eq!(run(&mut s, &next, ADMIN), Step::Refuse(Refusal::BAD_ACTION));
        match run(&mut s, &submit("troll@xmpp.test"), ADMIN) {
            Step::Run { text, .. } => assert_eq!(text, "ban troll@xmpp.test spam and flood"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_ends_the_session() {
        let mut s = Sessions::new();
        let sid = sessionid(&run(
            &mut s,
            "<command xmlns='http://jabber.org/protocol/commands' node='close'/>",
            ADMIN,
        ));
        let cancel = format!(
            "<command xmlns='http://jabber.org/protocol/commands' node='close' sessionid='{sid}' action='cancel'/>"
        );
        match run(&mut s, &cancel, ADMIN) {
            Step::Answer(c) => {
                assert_eq!(c.attr("status"), Some("canceled"));
                assert_eq!(c.attr("sessionid"), Some(sid.as_str()));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.is_empty());
        assert_eq!(
            run(&mut s, &cancel, ADMIN),
            Step::Refuse(Refusal::BAD_SESSION)
        );
    }

    #[test]
    fn unknown_nodes_sessions_and_actions_are_refused() {
        let mut s = Sessions::new();
        assert_eq!(
            run(
                &mut s,
                "<command xmlns='http://jabber.org/protocol/commands' node='rm-rf' action='execute'/>",
                ADMIN
            ),
            Step::Refuse(Refusal::UNKNOWN_NODE)
        );
        assert_eq!(
            run(
                &mut s,
                "<command xmlns='http://jabber.org/protocol/commands' node='ban' sessionid='made-up'/>",
                ADMIN
            ),
            Step::Refuse(Refusal::BAD_SESSION)
        );
        assert_eq!(
            run(
                &mut s,
                "<command xmlns='http://jabber.org/protocol/commands' node='status' action='fly'/>",
                ADMIN
            ),
            Step::Refuse(Refusal::MALFORMED_ACTION)
        );
        // The error stanza: bad-request with the specific condition, addressed back.
        let req = request("<command xmlns='http://jabber.org/protocol/commands' node='x'/>");
        let e = error_iq(&req, Refusal::BAD_SESSION);
        assert_eq!(e.attr("type"), Some("error"));
        assert_eq!(e.attr("to"), Some("admin@xmpp.test/pc"));
        assert_eq!(e.attr("from"), Some("bridge.xmpp.test"));
        assert_eq!(e.attr("id"), Some("q1"));
        let err = e.get_child("error", NS_CLIENT).unwrap();
        assert_eq!(err.attr("type"), Some("modify"));
        assert!(err.has_child("bad-request", NS_STANZAS));
        assert!(err.has_child("bad-sessionid", NS_COMMANDS));
        let ok = result_iq(&req, canceled("x", "s"));
        assert_eq!(ok.attr("type"), Some("result"));
        assert_eq!(ok.attr("to"), Some("admin@xmpp.test/pc"));
    }

    #[test]
    fn forms_expire_and_are_capped() {
        let mut s = Sessions::new();
        let start = Instant::now();
        let r = parse_request(&request(
            "<command xmlns='http://jabber.org/protocol/commands' node='kick'/>",
        ))
        .unwrap();
        let Step::Answer(first) = s.step(&r, ADMIN, start) else {
            panic!()
        };
        for _ in 0..MAX_SESSIONS + 5 {
            s.step(&r, ADMIN, start + Duration::from_secs(1));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        let sid = first.attr("sessionid").unwrap();
        let mut cont = r.clone();
        cont.sessionid = Some(sid.to_string());
        cont.action = Action::Cancel;
        assert_eq!(
            s.step(&cont, ADMIN, start + Duration::from_secs(2)),
            Step::Refuse(Refusal::BAD_SESSION),
            "the oldest form was dropped"
        );
        s.step(&r, ADMIN, start + SESSION_TTL * 2);
        assert_eq!(s.len(), 1, "expired forms are forgotten");
    }

    #[test]
    fn the_stanzas_parse_as_iqs() {
        let req = request("<command xmlns='http://jabber.org/protocol/commands' node='link'/>");
        let mut s = Sessions::new();
        let Step::Answer(form) = s.step(&parse_request(&req).unwrap(), ADMIN, Instant::now())
        else {
            panic!()
        };
        for iq in [
            result_iq(&req, form),
            result_iq(&req, completed("status", "s", "ok", true)),
            error_iq(&req, Refusal::BAD_PAYLOAD),
            error_iq(&req, Refusal::UNKNOWN_NODE),
            result_iq(&req, command_items("bridge.xmpp.test")),
        ] {
            tokio_xmpp::parsers::iq::Iq::try_from(iq.clone())
                .unwrap_or_else(|e| panic!("{e}: {}", String::from(&iq)));
        }
    }
}
