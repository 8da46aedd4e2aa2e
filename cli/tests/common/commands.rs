//! Finding `xarena` command lines in shell text (scripts, the workflow, the manual's
//! fenced blocks) and checking them against the real CLI (`xarena <sub> --help`).

use std::collections::HashMap;
use std::process::Command;

/// One `xarena` command line: where it was found and its words after `xarena`, up to the
/// end of the command.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub source: String,
    pub words: Vec<String>,
}

/// Logical lines: backslash continuations joined, comment lines dropped, and GitHub
/// `${{ ... }}` expressions replaced by one word (they hold spaces and `||`).
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if current.is_empty() && line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
        .into_iter()
        .map(|mut l| {
            while let Some(start) = l.find("${{") {
                let end = l[start..].find("}}").map_or(l.len(), |e| start + e + 2);
                l.replace_range(start..end, "EXPR");
            }
            l
        })
        .collect()
}

fn is_operator(word: &str) -> bool {
    matches!(
        word,
        "|" | "||" | "&&" | ";" | "&" | "(" | "{" | "!" | "then" | "do" | "else" | "$("
    )
}

/// Words that leave the next word in command position.
fn is_prefix(word: &str) -> bool {
    matches!(word, "exec" | "time" | "command" | "nohup")
        || word
            .split_once('=')
            .is_some_and(|(name, _)| !name.is_empty() && !name.starts_with('-'))
}

fn ends_command(word: &str) -> bool {
    word.starts_with(['|', ';', '&', '>', '<', ')'])
        || word.chars().next().is_some_and(|c| c.is_ascii_digit()) && word.contains('>')
}

/// Every `xarena` (or `.../xarena`) run as a command: at the start of a command, after an
/// operator, `$(`, `exec` or variable assignments; never inside an echo's text.
pub fn invocations(text: &str, source: &str) -> Vec<Invocation> {
    let mut found = Vec::new();
    for line in logical_lines(text) {
        // A word starting with `#` starts a comment (`xarena list   # the variants`).
        let raw: Vec<&str> = line
            .split_whitespace()
            .take_while(|w| !w.starts_with('#'))
            .collect();
        let mut command_position = true;
        let mut i = 0;
        while i < raw.len() {
            let mut word = raw[i];
            // `x=$(xarena ...)` and `(xarena ...)` start a command inside the word.
            if let Some(at) = word.rfind("$(") {
                word = &word[at + 2..];
                command_position = true;
            } else if let Some(rest) = word.strip_prefix('(') {
                word = rest;
                command_position = true;
            }
            let bare = word.trim_matches(|c| c == '"' || c == '\'');
            if command_position && (bare == "xarena" || bare.ends_with("/xarena")) {
                let mut words = Vec::new();
                i += 1;
                while i < raw.len() && !ends_command(raw[i]) {
                    let w = raw[i];
                    let stop = w.ends_with([';', ')']);
                    let w = w.trim_end_matches([';', ')']);
                    words.push(w.trim_matches(|c| c == '"' || c == '\'').to_string());
                    if stop {
                        break;
                    }
                    i += 1;
                }
                found.push(Invocation {
                    source: source.to_string(),
                    words,
                });
                command_position = true;
            } else {
                command_position = is_operator(bare)
                    || bare.ends_with(';')
                    || (command_position && is_prefix(bare));
            }
            i += 1;
        }
    }
    found
}

#[derive(Default)]
pub struct Cli {
    help: HashMap<Vec<String>, Result<String, String>>,
}

impl Cli {
    pub fn new() -> Cli {
        Cli::default()
    }

    /// `xarena <path> --help`, or why it failed.
    fn help(&mut self, path: &[String]) -> Result<String, String> {
        self.help
            .entry(path.to_vec())
            .or_insert_with(|| {
                let o = Command::new(env!("CARGO_BIN_EXE_xarena"))
                    .args(path)
                    .arg("--help")
                    .output()
                    .expect("xarena runs");
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                if o.status.success() {
                    Ok(text)
                } else {
                    // clap's first line names the problem; the rest is usage.
                    let err = String::from_utf8_lossy(&o.stderr);
                    Err(err.lines().next().unwrap_or("").trim().to_string())
                }
            })
            .clone()
    }

    /// What is wrong with one command line: an unknown subcommand or flags the CLI lacks.
    pub fn problems(&mut self, inv: &Invocation) -> Vec<String> {
        let Some(first) = inv.words.first() else {
            return vec![format!("{}: `xarena` with no subcommand", inv.source)];
        };
        let mut path = vec![first.clone()];
        let mut help = match self.help(&path) {
            Ok(h) => h,
            Err(e) => return vec![format!("{}: no subcommand `{first}` ({e})", inv.source)],
        };
        let mut rest = &inv.words[1..];
        // A subcommand with its own subcommands (`history ingest`).
        if help.contains("\nCommands:") {
            let Some(sub) = rest.first() else {
                return vec![format!(
                    "{}: `xarena {first}` needs a subcommand",
                    inv.source
                )];
            };
            path.push(sub.clone());
            help = match self.help(&path) {
                Ok(h) => h,
                Err(e) => {
                    return vec![format!(
                        "{}: no subcommand `{first} {sub}` ({e})",
                        inv.source
                    )]
                }
            };
            rest = &rest[1..];
        }
        rest.iter()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.split('=').next().unwrap())
            .filter(|flag| !help_has_flag(&help, flag))
            .map(|flag| {
                format!(
                    "{}: `xarena {}` has no flag {flag}",
                    inv.source,
                    path.join(" ")
                )
            })
            .collect()
    }
}

/// `flag` appears in the help as a whole flag (`--out` is not found in `--output`).
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let next = help[at + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}
