//! The README's capability table can not drift from the tests: every row names end-to-end
//! tests, each named test exists in `tests/e2e/` (where CI runs it against the real
//! servers), and a row that claims ✅ or a fallback anywhere names at least one test.

use std::fs;
use std::path::Path;

fn table(readme: &str) -> Vec<Vec<String>> {
    let start = readme
        .find("<!-- capabilities -->")
        .expect("README has a capabilities table");
    let end = readme
        .find("<!-- /capabilities -->")
        .expect("the capabilities table is closed");
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn e2e_sources() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let mut all = String::new();
    for entry in fs::read_dir(dir).expect("tests/e2e exists") {
        let path = entry.expect("readable dir").path();
        if path.extension().is_some_and(|e| e == "rs") {
            all.push_str(&fs::read_to_string(&path).expect("readable test file"));
        }
    }
    all
}

#[test]
fn every_claim_in_the_capability_table_names_an_existing_e2e_test() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let sources = e2e_sources();
    let rows = table(&readme);
    assert!(rows.len() >= 10, "the table lists the features");
    for row in rows {
        assert_eq!(row.len(), 8, "feature, six directions, tests: {row:?}");
        let claims = row[1..7]
            .iter()
            .any(|c| c.contains('✅') || c.contains("fallback"));
        let tests: Vec<&str> = row[7]
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, t)| t)
            .collect();
        if claims {
            assert!(
                !tests.is_empty(),
                "row {:?} claims support without a test",
                row[0]
            );
        }
        for t in tests {
            let decl = format!("async fn {t}(");
            let at = sources
                .find(&decl)
                .unwrap_or_else(|| panic!("row {:?} names {t}, which is not in tests/e2e", row[0]));
            let before = &sources[..at];
            let attrs = &before[before.len().saturating_sub(200)..];
            assert!(attrs.contains("#[tokio::test"), "{t} is a test");
            assert!(!attrs.contains("#[ignore"), "{t} is not ignored");
        }
    }
}
