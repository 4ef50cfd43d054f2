//! Every header, attribute, metric and JSON key llm-meter spells lives in `names`: no other
//! source file of the workspace spells a `gen_ai.`, `llm_meter.`, `xProxy`/`xproxy`,
//! `x-ratelimit` or `openai-` name in a string literal (tests and doc comments aside).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::{Path, PathBuf};

const PATTERNS: [&str; 6] = [
    "\"gen_ai.",
    "\"llm_meter.",
    "\"xproxy",
    "\"xProxy",
    "\"x-ratelimit",
    "\"openai-",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Names spelled outside `names` in `text`, as `line: text`; unit tests (from the first
/// `#[cfg(test)]`), comments and the `target: "llm_meter"` of log lines are left out.
fn spelled_names(text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| {
            (
                i,
                l.replace("target: \"llm_meter\"", "")
                    .replace("target: \"llm_meter::", ""),
            )
        })
        .filter(|(_, l)| PATTERNS.iter().any(|p| l.contains(p)))
        .map(|(i, l)| format!("{}: {}", i + 1, l.trim()))
        .collect()
}

#[test]
fn names_are_spelled_only_in_the_names_module() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        sources(&krate.unwrap().path().join("src"), &mut files);
    }
    assert!(files.len() >= 20, "{files:?}");
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("src/names.rs")) {
        for hit in spelled_names(&std::fs::read_to_string(file).unwrap()) {
            found.push(format!("{}:{hit}", file.strip_prefix(&root).unwrap().display()));
        }
    }
    assert!(
        found.is_empty(),
        "names spelled outside src/names.rs:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_sees_literals_and_skips_comments_tests_and_log_targets() {
    let text = "let a = \"gen_ai.request.model\";\n// \"xProxy-User-ID\"\ntracing::warn!(target: \"llm_meter\", \"x\");\n#[cfg(test)]\nlet b = \"openai-version\";\n";
    assert_eq!(spelled_names(text), ["1: let a = \"gen_ai.request.model\";"]);
}
