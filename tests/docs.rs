//! The commands the documentation shows are real: every `mirrorswarm …` line in the README,
//! docs/, SECURITY.md and the systemd units parses with the binary's own argument parser
//! (run with `--help` appended, which clap answers only after accepting every argument before
//! it). A renamed flag or subcommand fails here, not in an admin's terminal.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `mirrorswarm …` command lines in code blocks of a markdown file, or in `ExecStart=` of a
/// unit file; continuation lines joined, comments dropped.
fn commands(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let unit = path.extension().is_some_and(|e| e == "service");
    let mut out = Vec::new();
    let mut in_code = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let line = if unit {
            match line.strip_prefix("ExecStart=") {
                Some(rest) => rest,
                None => continue,
            }
        } else if in_code {
            line
        } else {
            continue;
        };
        let line = line.split(" #").next().unwrap_or("").trim_end();
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        // The program must be the command run: first word, after any environment
        // assignments (`http_proxy=… mirrorswarm`) or cron schedule fields.
        let words: Vec<&str> = full.split_whitespace().collect();
        let first = words.iter().position(|w| {
            let env = w.contains('=') && !w.starts_with('-');
            let cron = w.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c));
            !(env || cron)
        });
        if let Some(i) = first {
            if words[i] == "mirrorswarm" || words[i].ends_with("/mirrorswarm") {
                out.push(format!("mirrorswarm {}", words[i + 1..].join(" ")));
            }
        }
    }
    out
}

#[test]
fn documented_commands_parse() {
    let mut files = vec![root().join("README.md"), root().join("SECURITY.md")];
    for dir in ["docs", "packaging"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md" || x == "service") {
                files.push(p);
            }
        }
    }
    let mut checked = 0;
    for f in &files {
        for cmd in commands(f) {
            // Alternatives and elisions are for people: `a|b`, `[--opt …]`, `…`.
            if cmd.contains('|') || cmd.contains('[') || cmd.contains('…') {
                continue;
            }
            let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
            let out = Command::new(BIN)
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: `{cmd}` does not parse:\n{}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} documented commands found");
}

/// A reader of the repository finds everything the documentation names in it: no path
/// leads outside (a design brief beside a developer's checkout is not beside a user's).
#[test]
fn the_documentation_points_nowhere_outside_the_repository() {
    let mut files = vec![
        root().join("README.md"),
        root().join("ARCHITECTURE.md"),
        root().join("SECURITY.md"),
        root().join("BENCHMARKS.md"),
    ];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains("](../") && !line.contains("`../") && !line.contains(" ../"),
                "{}:{}: points outside the repository: {line}",
                f.display(),
                i + 1
            );
        }
    }
}
