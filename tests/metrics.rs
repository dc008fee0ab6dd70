//! The metrics and health endpoint over real HTTP on loopback: `/metrics` in the Prometheus
//! text format, `/health` with 200 or 503 and a JSON body, and a clean stop on cancellation.

use junction::metrics::{serve, serve_listener, Health, Metrics, NetworkState};
use junction_core::NetworkId;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bound on waiting for the server task to finish after cancellation.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

fn networks() -> Vec<NetworkId> {
    vec![
        NetworkId::new("matrix"),
        NetworkId::new("xmpp"),
        NetworkId::new(format!("irc:{}", junction_testkit::unique("net"))),
    ]
}

#[tokio::test]
async fn metrics_and_health_over_http() -> anyhow::Result<()> {
    let nets = networks();
    let irc = nets[2].clone();
    let metrics = Arc::new(Metrics::new(nets.clone()));
    let health = Arc::new(Health::new(nets.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_listener(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");

    metrics.inbound(&irc);
    metrics.inbound(&irc);
    metrics.delivered(&NetworkId::new("matrix"), Duration::from_millis(12));
    metrics.set_outbox_depth(&NetworkId::new("xmpp"), 5);
    metrics.error(&irc, "send");

    let response = http.get(format!("{base}/metrics")).send().await?;
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = response.text().await?;
    assert!(
        body.contains("# TYPE junction_messages_in_total counter\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "junction_messages_in_total{{network=\"{irc}\"}} 2\n"
        )),
        "{body}"
    );
    assert!(
        body.contains("junction_outbox_depth{network=\"xmpp\"} 5\n"),
        "{body}"
    );
    assert!(
        body.contains(
            "junction_delivery_latency_seconds_bucket{network=\"matrix\",le=\"0.025\"} 1\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("junction_delivery_latency_seconds_count{network=\"matrix\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "junction_errors_total{{network=\"{irc}\",kind=\"send\"}} 1\n"
        )),
        "{body}"
    );

    // Nothing connected yet: 503 with every network down and why.
    let response = http.get(format!("{base}/health")).send().await?;
    assert_eq!(response.status(), 503);
    let json: serde_json::Value = response.json().await?;
    assert_eq!(json["status"], "down");
    let listed = json["networks"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .all(|n| n["state"] == "down" && n["reason"] == "not connected yet"));

    // One degraded: still 503, with the reason.
    for net in &nets {
        health.set(net, NetworkState::Connected);
    }
    health.set(&irc, NetworkState::Degraded("puppet limit reached".into()));
    let response = http.get(format!("{base}/health")).send().await?;
    assert_eq!(response.status(), 503);
    let json: serde_json::Value = response.json().await?;
    assert_eq!(json["status"], "degraded");
    let entry = json["networks"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["network"] == irc.as_str()).cloned())
        .expect("the IRC network is listed");
    assert_eq!(entry["state"], "degraded");
    assert_eq!(entry["reason"], "puppet limit reached");

    // All connected: 200.
    health.set(&irc, NetworkState::Connected);
    let response = http.get(format!("{base}/health")).send().await?;
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().await?;
    assert_eq!(json["status"], "ok");

    // Anything else is not found.
    let response = http.get(format!("{base}/nope")).send().await?;
    assert_eq!(response.status(), 404);

    shutdown.cancel();
    tokio::time::timeout(STOP_DEADLINE, server).await???;
    Ok(())
}

#[tokio::test]
async fn serve_binds_the_given_address_and_stops_on_cancellation() -> anyhow::Result<()> {
    // Pick a free port, release it and hand the address to `serve`, as the config would.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let metrics = Arc::new(Metrics::new(networks()));
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(addr, metrics, health, shutdown.clone()));
    let url = format!("http://{addr}/health");
    let status = junction_testkit::eventually(Duration::from_secs(10), "the server", || {
        let url = url.clone();
        async move { reqwest::get(&url).await.ok().map(|r| r.status()) }
    })
    .await?;
    // No networks known: healthy.
    assert_eq!(status, 200);

    shutdown.cancel();
    tokio::time::timeout(STOP_DEADLINE, server).await???;
    assert!(
        reqwest::get(&url).await.is_err(),
        "the port is closed after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn serve_reports_an_address_in_use() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0").await?;
    let addr = taken.local_addr()?;
    let result = serve(
        addr,
        Arc::new(Metrics::default()),
        Arc::new(Health::default()),
        CancellationToken::new(),
    )
    .await;
    let error = result.expect_err("the port is taken");
    assert!(
        format!("{error:#}").contains(&addr.to_string()),
        "{error:#}"
    );
    Ok(())
}

/// Every metric `packaging/grafana-dashboard.json` queries is a family `/metrics` serves
/// (its `# TYPE` line; a histogram's `_bucket`, `_sum` and `_count` belong to it).
#[tokio::test]
async fn every_metric_the_dashboard_queries_is_served() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_listener(
        listener,
        Arc::new(Metrics::new(networks())),
        Arc::new(Health::default()),
        shutdown.clone(),
    ));
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("junction_") {
                    queried.push(word.to_owned());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
            .unwrap_or(name);
        assert!(families.contains(&family), "{name} is not served:\n{body}");
    }
    shutdown.cancel();
    tokio::time::timeout(STOP_DEADLINE, server).await???;
    Ok(())
}
