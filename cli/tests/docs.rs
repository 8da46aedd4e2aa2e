//! The manual (README.md and the book in docs/) checked against the code:
//! - every relative link and anchor resolves, and every mdBook `{{#include}}` finds its
//!   file and anchor;
//! - every generated block (`<!-- generated: xarena ARGS -->` ... `<!-- end generated -->`)
//!   is what `xarena ARGS` prints now, and the generated pages (the CLI from `--help`, the
//!   variants from `xarena list` and their files' doc comments, the record schemas from
//!   the schema crate's definitions) are what the code gives now;
//! - every `xarena` command in a fenced shell block uses subcommands and flags the CLI
//!   has, and every script it runs exists.
//!
//! `XARENA_UPDATE_DOCS=1 cargo test -p xarena-cli --test docs` rewrites what is generated.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};

use common::commands::{invocations, Cli};
use common::{files_with, repo, xarena};
use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use quote::ToTokens;

const GEN_BEGIN: &str = "<!-- generated: xarena ";
const GEN_END: &str = "<!-- end generated -->";
const UPDATE_HINT: &str = "rerun with XARENA_UPDATE_DOCS=1 cargo test -p xarena-cli --test docs";

fn update() -> bool {
    std::env::var_os("XARENA_UPDATE_DOCS").is_some()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", rel(p)))
}

/// README.md and every Markdown page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut out = vec![repo().join("README.md")];
    out.extend(files_with(&repo().join("docs"), "md"));
    out
}

// ---------------------------------------------------------------------------------------
// Reading a page.

/// What these tests need of a page.
#[derive(Default)]
struct Page {
    /// Its headings' anchors, as mdBook and GitHub make them.
    anchors: HashSet<String>,
    /// Link and image destinations.
    links: Vec<String>,
    /// Fenced code blocks: language and text.
    blocks: Vec<(String, String)>,
}

/// A heading's anchor as mdBook and GitHub make it: lowercase, letters, digits, `-` and
/// `_` kept, whitespace made `-`, everything else dropped.
fn heading_id(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                Some(c)
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

fn parse(text: &str) -> Page {
    let mut page = Page::default();
    let mut heading: Option<String> = None;
    let mut block: Option<(String, String)> = None;
    let mut repeats: HashMap<String, usize> = HashMap::new();
    let options = Options::ENABLE_TABLES | Options::ENABLE_HEADING_ATTRIBUTES;
    for event in Parser::new_ext(text, options) {
        match event {
            Event::Start(Tag::Heading { id, .. }) => {
                if let Some(id) = id {
                    page.anchors.insert(id.to_string());
                }
                heading = Some(String::new());
            }
            Event::End(TagEnd::Heading(_)) => {
                let id = heading_id(&heading.take().unwrap_or_default());
                // A repeated heading gets -1, -2, ... in both renderers.
                let n = repeats.entry(id.clone()).or_insert(0);
                page.anchors.insert(if *n == 0 {
                    id.clone()
                } else {
                    format!("{id}-{n}")
                });
                *n += 1;
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = &mut heading {
                    h.push_str(&t);
                }
                if let Some((_, b)) = &mut block {
                    b.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => page.links.push(dest_url.to_string()),
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match kind {
                    CodeBlockKind::Fenced(l) => l.split(',').next().unwrap_or("").to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                block = Some((lang, String::new()));
            }
            Event::End(TagEnd::CodeBlock) => page.blocks.extend(block.take()),
            _ => {}
        }
    }
    page
}

/// `dir/target` with `.` and `..` resolved, without touching the file system.
fn join(dir: &Path, target: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in dir.join(target).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// mdBook's `{{#include FILE}}` and `{{#include FILE:ANCHOR}}` (line ranges too).
fn includes(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("{{#include ") {
        let body = &rest[at + "{{#include ".len()..];
        let end = body.find("}}").unwrap_or(body.len());
        let spec = body[..end].trim();
        let (file, anchor) = match spec.split_once(':') {
            Some((f, a)) => (f, Some(a)),
            None => (spec, None),
        };
        // A line range (`:10:20`, `:10:`) names lines, not an anchor.
        let anchor = anchor
            .filter(|a| !a.starts_with(|c: char| c.is_ascii_digit() || c == ':'))
            .map(str::to_string);
        out.push((file.to_string(), anchor));
        rest = &body[end..];
    }
    out
}

#[test]
fn the_link_checker_finds_anchors_links_and_blocks() {
    let page = parse(
        "# Getting started\n\n## Run `xarena run`, twice!\n\n## Run `xarena run`, twice!\n\n\
         See [a](guides/x.md#y) and ![p](p.svg).\n\n```bash\nxarena list\n```\n\n\
         {{#include ../../variants/src/fixed/local.rs:config}}\n",
    );
    let mut anchors: Vec<&str> = page.anchors.iter().map(String::as_str).collect();
    anchors.sort();
    assert_eq!(
        anchors,
        [
            "getting-started",
            "run-xarena-run-twice",
            "run-xarena-run-twice-1"
        ]
    );
    assert_eq!(page.links, ["guides/x.md#y", "p.svg"]);
    assert_eq!(
        page.blocks,
        [("bash".to_string(), "xarena list\n".to_string())]
    );
    assert_eq!(
        includes("{{#include a.rs:config}} {{#include b.rs}} {{#include c.rs:3:9}}"),
        [
            ("a.rs".to_string(), Some("config".to_string())),
            ("b.rs".to_string(), None),
            ("c.rs".to_string(), None)
        ]
    );
    assert_eq!(
        join(Path::new("/r/docs/guides"), "../../README.md"),
        Path::new("/r/README.md")
    );
}

/// Every relative link (and image) in the README and the book names a file or directory
/// of the repository, and every anchor a heading of its page; every include its file and
/// anchor.
#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = repo();
    let parsed: BTreeMap<PathBuf, (String, Page)> = pages()
        .into_iter()
        .map(|p| {
            let text = read(&p);
            let page = parse(&text);
            (p, (text, page))
        })
        .collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, (text, page)) in &parsed {
        let dir = path.parent().unwrap();
        for link in &page.links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (target, anchor) = match link.split_once('#') {
                Some((t, a)) => (t, Some(a)),
                None => (link.as_str(), None),
            };
            let file = if target.is_empty() {
                path.clone()
            } else {
                join(dir, &target.replace("%20", " "))
            };
            if !file.starts_with(&root) || !file.exists() {
                problems.push(format!(
                    "{}: link {link}: no file {}",
                    rel(path),
                    rel(&file)
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let anchors = match parsed.get(&file) {
                Some((_, p)) => &p.anchors,
                None => {
                    problems.push(format!(
                        "{}: link {link}: an anchor into a file that is not a page",
                        rel(path)
                    ));
                    continue;
                }
            };
            if !anchors.contains(anchor) {
                problems.push(format!(
                    "{}: link {link}: no heading #{anchor} in {}",
                    rel(path),
                    rel(&file)
                ));
            }
        }
        for (file, anchor) in includes(text) {
            checked += 1;
            let f = join(dir, &file);
            match std::fs::read_to_string(&f) {
                Err(_) => problems.push(format!("{}: include {file}: no such file", rel(path))),
                Ok(src) => {
                    if let Some(a) = anchor {
                        if !src.contains(&format!("ANCHOR: {a}")) {
                            problems.push(format!(
                                "{}: include {file}:{a}: no `ANCHOR: {a}` in it",
                                rel(path)
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the parser right?"
    );
    assert!(
        problems.is_empty(),
        "{} broken link(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every page of the book is a chapter of its summary, so none is unreachable from the
/// site, and every chapter exists (mdBook would make an empty one).
#[test]
fn every_book_page_is_in_the_summary() {
    let docs = repo().join("docs");
    let summary = parse(&read(&docs.join("SUMMARY.md")));
    let chapters: HashSet<PathBuf> = summary.links.iter().map(|l| join(&docs, l)).collect();
    let mut missing = Vec::new();
    for page in pages().into_iter().filter(|p| p.starts_with(&docs)) {
        let name = page.file_name().unwrap();
        // Scripts' outputs kept beside their runs are data, not chapters.
        let data = name != "README.md" && page.starts_with(docs.join("results"));
        if name != "SUMMARY.md" && !data && !chapters.contains(&page) {
            missing.push(rel(&page));
        }
    }
    for c in &chapters {
        assert!(c.is_file(), "SUMMARY.md names {}, which is missing", rel(c));
    }
    assert!(
        missing.is_empty(),
        "pages not in docs/SUMMARY.md: {}",
        missing.join(", ")
    );
}

// ---------------------------------------------------------------------------------------
// Generated blocks and pages.

/// `xarena ARGS` run from the repository root, its standard output.
fn output_of(args: &[&str]) -> String {
    let o = xarena()
        .args(args)
        .current_dir(repo())
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "xarena {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut text = String::from_utf8(o.stdout).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// `doc` with each generated block replaced by what its command prints now, and the
/// blocks that differed.
fn regenerate(doc: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut stale = Vec::new();
    let mut rest = doc;
    // A marker starts a line (a page may quote the syntax inside a sentence).
    let marker = |s: &str| {
        let mut from = 0;
        while let Some(i) = s[from..].find(GEN_BEGIN) {
            let at = from + i;
            if at == 0 || s.as_bytes()[at - 1] == b'\n' {
                return Some(at);
            }
            from = at + 1;
        }
        None
    };
    while let Some(at) = marker(rest) {
        let line = &rest[at..at + rest[at..].find('\n').expect("a line after the marker")];
        let args: Vec<&str> = line[GEN_BEGIN.len()..]
            .trim_end()
            .trim_end_matches("-->")
            .split_whitespace()
            .collect();
        let body = at + line.len() + 1;
        let end = body
            + rest[body..]
                .find(GEN_END)
                .unwrap_or_else(|| panic!("no `{GEN_END}` after `{line}`"));
        let want = output_of(&args);
        if rest[body..end] != want {
            stale.push(format!("xarena {}", args.join(" ")));
        }
        out.push_str(&rest[..body]);
        out.push_str(&want);
        rest = &rest[end..];
    }
    out.push_str(rest);
    (out, stale)
}

#[test]
fn generated_blocks_are_what_the_binary_prints() {
    let (doc, stale) = regenerate(&format!(
        "a\n{GEN_BEGIN}list --format md -->\nold\n{GEN_END}\nb\n"
    ));
    assert_eq!(stale, ["xarena list --format md"]);
    assert!(doc.contains("| vanilla") && doc.ends_with(&format!("{GEN_END}\nb\n")));
    assert_eq!(regenerate(&doc), (doc.clone(), vec![]));

    let mut problems = Vec::new();
    let mut blocks = 0;
    for path in pages() {
        let text = read(&path);
        blocks += text.matches(GEN_BEGIN).count();
        let (fresh, stale) = regenerate(&text);
        if stale.is_empty() {
            continue;
        }
        if update() {
            std::fs::write(&path, fresh).unwrap();
        } else {
            problems.extend(stale.iter().map(|s| format!("{}: `{s}`", rel(&path))));
        }
    }
    assert!(blocks > 0, "no generated block found");
    assert!(
        problems.is_empty(),
        "generated blocks differ from what the binary prints ({UPDATE_HINT}):\n{}",
        problems.join("\n")
    );
}

/// A file made whole by a generator: equal to it, or rewritten under XARENA_UPDATE_DOCS.
fn check_page(rel_path: &str, want: impl AsRef<[u8]>) {
    let path = repo().join(rel_path);
    let want = want.as_ref();
    if std::fs::read(&path).ok().as_deref() == Some(want) {
        return;
    }
    if update() {
        std::fs::write(&path, want).unwrap();
        return;
    }
    panic!("{rel_path} differs from what the code gives now; {UPDATE_HINT}");
}

fn generated_note(by: &str) -> String {
    format!(
        "<!-- Generated by cli/tests/docs.rs from {by}; do not edit: \
         XARENA_UPDATE_DOCS=1 cargo test -p xarena-cli --test docs rewrites it. -->\n"
    )
}

/// The subcommands a `--help` lists (clap's `Commands:` section), `help` left out.
fn subcommands(help: &str) -> Vec<String> {
    let Some(at) = help.find("\nCommands:\n") else {
        return Vec::new();
    };
    help[at + "\nCommands:\n".len()..]
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

fn cli_page() -> String {
    let mut out = format!(
        "# Command line\n\n{}\nEvery subcommand's `--help`, as `xarena` prints it. The \
         [guides](../getting-started.md) show them at work.\n",
        generated_note("`xarena ... --help`")
    );
    let mut queue = VecDeque::from([Vec::<String>::new()]);
    while let Some(path) = queue.pop_front() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = output_of(&args);
        let name = std::iter::once("xarena")
            .chain(path.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!("\n## {name}\n\n```text\n{help}```\n"));
        for sub in subcommands(&help) {
            let mut p = path.clone();
            p.push(sub);
            queue.push_back(p);
        }
    }
    out
}

#[test]
fn the_cli_reference_is_every_help() {
    let page = cli_page();
    for sub in [
        "## xarena run",
        "## xarena kv bench",
        "## xarena history show",
    ] {
        assert!(page.contains(&format!("{sub}\n")), "{sub} missing");
    }
    check_page("docs/reference/cli.md", &page);
}

/// A file's leading `//!` lines, as Markdown.
fn module_doc(src: &str) -> String {
    let mut out = String::new();
    for line in src.lines() {
        let Some(rest) = line.strip_prefix("//!") else {
            break;
        };
        out.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        out.push('\n');
    }
    out
}

/// The doc comment on an item or field, one line per `///` line.
fn doc_of(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .map(|l| l.strip_prefix(' ').unwrap_or(&l).to_string())
        .collect();
    lines.join("\n")
}

/// Text for a table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A type as written in the source (`Option<u64>`).
fn type_text(ty: &syn::Type) -> String {
    let mut s = ty.to_token_stream().to_string();
    for (from, to) in [
        (" < ", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        (" :: ", "::"),
    ] {
        s = s.replace(from, to);
    }
    s.replace("& '", "&'")
}

/// The variant's `Config` fields and their docs, from its file.
fn config_rows(file: &syn::File, defaults: &serde_json::Value) -> Vec<String> {
    let mut rows = Vec::new();
    for item in &file.items {
        let syn::Item::Struct(s) = item else { continue };
        if s.ident != "Config" {
            continue;
        }
        for f in &s.fields {
            let name = f.ident.as_ref().map(|i| i.to_string()).unwrap_or_default();
            let default = defaults
                .get(&name)
                .map_or(String::new(), |v| format!("`{v}`"));
            rows.push(format!(
                "| `{name}` | `{}` | {default} | {} |",
                type_text(&f.ty),
                cell(&doc_of(&f.attrs))
            ));
        }
    }
    rows
}

/// Where a variant's `INFO` names it.
fn variant_file(name: &str) -> PathBuf {
    let files = files_with(&repo().join("variants/src"), "rs");
    let needle = format!("name: \"{name}\",");
    let found: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| read(f).contains(&needle))
        .collect();
    assert_eq!(found.len(), 1, "`{needle}` in {found:?}");
    found.into_iter().next().unwrap()
}

fn variants_page() -> String {
    let list: serde_json::Value =
        serde_json::from_str(&output_of(&["list", "--format", "json"])).unwrap();
    let mut out = format!(
        "# Variants\n\n{}\nEvery variant in the registry: `xarena list --format md` (defaults \
         are each variant's budget; time and memory are the papers' claims, which reports \
         set beside the exponents they fit), then each variant's own notes, from its \
         file's documentation, and its parameters, from its `Config`. What several \
         variants share (the block-sparse engine, the fused kernel) is in \
         [Shared machinery](variants-shared.md); how to add one, in \
         [Adding a variant](../development/adding-a-variant.md).\n\n",
        generated_note("`xarena list` and the variants' source files")
    );
    out.push_str(&output_of(&["list", "--format", "md"]));
    for v in list.as_array().unwrap() {
        let info = &v["info"];
        let name = info["name"].as_str().unwrap();
        let path = variant_file(name);
        let src = read(&path);
        let file = syn::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", rel(&path)));
        out.push_str(&format!(
            "\n## {name}\n\nFamily `{}`; time {}, memory {}; [{}](../../{}).\n\n{}",
            info["family"].as_str().unwrap(),
            info["time"].as_str().unwrap(),
            info["memory"].as_str().unwrap(),
            rel(&path),
            rel(&path),
            module_doc(&src)
        ));
        let rows = config_rows(&file, &v["defaults"]);
        if !rows.is_empty() {
            out.push_str(&format!(
                "\nParameters (`{name}:key=value`):\n\n| parameter | type | default | meaning |\n\
                 |---|---|---|---|\n{}\n",
                rows.join("\n")
            ));
        }
    }
    out
}

#[test]
fn the_variants_reference_is_the_registry_and_the_variants_own_docs() {
    let page = variants_page();
    assert!(page.contains("\n## local\n") && page.contains("| `window` | `i64` | `128` |"));
    check_page("docs/reference/variants.md", &page);
}

/// A type's serialised name under `rename_all`.
fn renamed(ident: &str, rule: Option<&str>) -> String {
    let snake = || {
        let mut s = String::new();
        for (i, c) in ident.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.extend(c.to_lowercase());
        }
        s
    };
    match rule {
        Some("lowercase") => ident.to_lowercase(),
        Some("snake_case") => snake(),
        Some("kebab-case") => snake().replace('_', "-"),
        _ => ident.to_string(),
    }
}

/// `#[serde(...)]` settings of an item or field: `rename`, `rename_all`, `flatten`,
/// `skip_serializing_if`, `default`.
fn serde_of(attrs: &[syn::Attribute]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = a.parse_nested_meta(|m| {
            let key = m.path.to_token_stream().to_string();
            let value = match m.value() {
                Ok(v) => v
                    .parse::<syn::LitStr>()
                    .map(|s| s.value())
                    .unwrap_or_default(),
                Err(_) => String::new(),
            };
            out.insert(key, value);
            Ok(())
        });
    }
    out
}

/// The names of types a type mentions (`Option<Vec<Visit>>`: Option, Vec, Visit).
fn mentioned(ty: &syn::Type) -> Vec<String> {
    type_text(ty)
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn schemas_page() -> String {
    let dir = repo().join("schema/src");
    let mut items: HashMap<String, (String, syn::Item)> = HashMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let file = syn::parse_file(&read(&f)).unwrap();
        for item in file.items {
            let name = match &item {
                syn::Item::Struct(s) => s.ident.to_string(),
                syn::Item::Enum(e) => e.ident.to_string(),
                _ => continue,
            };
            items.insert(name, (rel(&f), item));
        }
    }
    let mut out = format!(
        "# Record schemas\n\n{}\nEvery file a run writes is JSON lines, one record a line, \
         each with its `schema` version (a reader refuses another major version rather \
         than misread it). The types below are the ones the code writes and reads \
         (`schema/src`), each field with its meaning; a field marked *omitted when empty* \
         is left out of the line when it has no value, and older records without it still \
         read.\n",
        generated_note("the schema crate's types and doc comments")
    );
    let roots = [
        (
            "results.jsonl",
            "Record",
            "one per case of `xarena run` (and `merge`)",
        ),
        (
            "accuracy.jsonl",
            "AccuracyRecord",
            "one per trained model and task (`train`, `lra`)",
        ),
        ("kv.jsonl", "KvRecord", "one per KV-cache case (`kv bench`)"),
    ];
    let mut done: HashSet<String> = HashSet::new();
    for (file, root, what) in roots {
        out.push_str(&format!("\n## {file}\n\n`{root}`: {what}.\n"));
        let mut queue = VecDeque::from([root.to_string()]);
        while let Some(name) = queue.pop_front() {
            if !done.insert(name.clone()) {
                continue;
            }
            let Some((src, item)) = items.get(&name) else {
                continue;
            };
            out.push_str(&format!("\n### {name}\n\n"));
            match item {
                syn::Item::Struct(s) => {
                    let doc = doc_of(&s.attrs);
                    if !doc.is_empty() {
                        out.push_str(&format!("{doc}\n\n"));
                    }
                    out.push_str(&format!(
                        "Defined in `{src}`.\n\n| field | type | meaning |\n|---|---|---|\n"
                    ));
                    for f in &s.fields {
                        let serde = serde_of(&f.attrs);
                        let ident = f.ident.as_ref().map(|i| i.to_string()).unwrap_or_default();
                        let field = serde.get("rename").cloned().unwrap_or(ident);
                        let mut meaning = cell(&doc_of(&f.attrs));
                        if serde.contains_key("flatten") {
                            meaning = format!("(its fields sit at this level) {meaning}");
                        }
                        if serde.contains_key("skip_serializing_if") {
                            meaning.push_str(" *omitted when empty*");
                        }
                        out.push_str(&format!(
                            "| `{field}` | `{}` | {} |\n",
                            type_text(&f.ty),
                            meaning.trim()
                        ));
                        for t in mentioned(&f.ty) {
                            if items.contains_key(&t) && !done.contains(&t) {
                                queue.push_back(t);
                            }
                        }
                    }
                }
                syn::Item::Enum(e) => {
                    let doc = doc_of(&e.attrs);
                    if !doc.is_empty() {
                        out.push_str(&format!("{doc}\n\n"));
                    }
                    let serde = serde_of(&e.attrs);
                    let rule = serde.get("rename_all").map(String::as_str);
                    out.push_str(&format!(
                        "Defined in `{src}`. One of:\n\n| value | meaning |\n|---|---|\n"
                    ));
                    for v in &e.variants {
                        let own = serde_of(&v.attrs);
                        let value = own
                            .get("rename")
                            .cloned()
                            .unwrap_or_else(|| renamed(&v.ident.to_string(), rule));
                        out.push_str(&format!("| `{value}` | {} |\n", cell(&doc_of(&v.attrs))));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn the_schema_reference_is_the_schema_crate() {
    assert_eq!(renamed("SumMod", Some("kebab-case")), "sum-mod");
    assert_eq!(renamed("Bf16", Some("lowercase")), "bf16");
    let page = schemas_page();
    for expected in [
        "## results.jsonl",
        "### Record\n",
        "| `median_s` |",
        "### KvRecord\n",
    ] {
        assert!(page.contains(expected), "{expected} missing");
    }
    check_page("docs/reference/schemas.md", &page);
}

// ---------------------------------------------------------------------------------------
// Commands in fenced blocks.

/// A fenced block that a shell would run.
fn is_shell(lang: &str) -> bool {
    matches!(lang, "bash" | "sh" | "shell" | "console" | "shell-session")
}

/// A block's text as shell: `$ ` prompts dropped, `cargo run [--release] --` made
/// `xarena`.
fn shell_text(block: &str) -> String {
    block
        .lines()
        .map(|l| {
            let l = l.strip_prefix("$ ").unwrap_or(l);
            l.replace("cargo run --release --", "xarena")
                .replace("cargo run --", "xarena")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scripts a block runs with `bash`/`sh` (`bash ci/main.sh`): their paths.
fn scripts(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let script = pair[1].trim_matches('"');
            if matches!(pair[0], "bash" | "sh" | "$(bash")
                && script.ends_with(".sh")
                && !script.contains('$')
            {
                out.push(script.to_string());
            }
        }
    }
    out
}

#[test]
fn commands_in_fenced_blocks_exist_in_the_cli() {
    let mut cli = Cli::new();
    let mut problems = Vec::new();
    let mut commands = 0;
    for path in pages() {
        let page = parse(&read(&path));
        for (_, block) in page.blocks.iter().filter(|(l, _)| is_shell(l)) {
            let text = shell_text(block);
            for inv in invocations(&text, &rel(&path)) {
                commands += 1;
                problems.extend(cli.problems(&inv));
                if let Some(at) = inv.words.iter().position(|w| w == "--sweep") {
                    let file = &inv.words[at + 1];
                    // A bare name is the reader's own file (`my-sweep.toml`); a path is ours.
                    let ours = file.contains('/') && !file.starts_with('$');
                    if ours && !repo().join(file).is_file() {
                        problems.push(format!("{}: no sweep file {file}", rel(&path)));
                    }
                }
            }
            for s in scripts(&text) {
                if !repo().join(&s).is_file() {
                    problems.push(format!("{}: no script {s}", rel(&path)));
                }
            }
        }
    }
    assert!(commands > 20, "only {commands} commands found");
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{} problem(s) in the manual's commands:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every sweep file the manual shows (a TOML block with `variants`) is one the runner
/// takes: it parses, and its cases build (on the CPU here).
#[test]
fn sweep_files_in_the_manual_are_valid() {
    use xarena_bench::sweep::{Sweep, SweepFile};
    let dir = std::env::temp_dir().join(format!("xarena-docs-sweeps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut found = 0;
    for path in pages() {
        for (i, (lang, block)) in parse(&read(&path)).blocks.iter().enumerate() {
            if lang != "toml" || !block.lines().any(|l| l.starts_with("variants")) {
                continue;
            }
            found += 1;
            let file = dir.join(format!("{found}.toml"));
            std::fs::write(&file, block).unwrap();
            let at = format!("{} (block {i})", rel(&path));
            let parsed = SweepFile::read(&file).unwrap_or_else(|e| panic!("{at}: {e}"));
            let mut sweep = Sweep::default();
            sweep
                .apply_file(parsed)
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            sweep.device = vec!["cpu".into()];
            let cases = sweep.cases().unwrap_or_else(|e| panic!("{at}: {e}"));
            assert!(!cases.is_empty(), "{at}: no cases");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(found > 0, "no sweep file in the manual");
}

/// The README stays an entrance: what xarena is, the headline, the two commands, a sweep
/// of your own, how to read it; the rest is the book's.
#[test]
fn the_readme_is_at_most_200_lines() {
    let lines = read(&repo().join("README.md")).lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; move the detail into docs/"
    );
}

/// The README's picture is the report's latency plot of its run, as `report --out`
/// draws it now.
#[test]
fn the_readme_picture_is_the_runs_latency_plot() {
    let run = "docs/results/leaderboard-cpu-forward-b1";
    let plot = "latency-cpu-f32-forward-attention-b1-h8x64.svg";
    assert!(read(&repo().join("README.md")).contains(&format!("]({run}/{plot})")));
    let out = std::env::temp_dir().join(format!("xarena-docs-plot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    output_of(&["report", run, "--out", out.to_str().unwrap()]);
    let drawn = std::fs::read(out.join(plot)).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    check_page(&format!("{run}/{plot}"), drawn);
}
