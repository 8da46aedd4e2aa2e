//! The docs that repeat what the code knows are generated from it: a test fails when
//! they are stale, and `XARENA_UPDATE_DOCS=1 cargo test -p xarena-cli --test docs`
//! rewrites them.

mod common;

use common::{repo, xarena};

const BEGIN: &str = "<!-- begin: xarena list --format md";
const END: &str = "<!-- end: xarena list -->";

/// The text between the marker lines of `doc`, and where it starts and ends.
fn generated(doc: &str) -> (usize, usize) {
    let begin = doc.find(BEGIN).expect("the begin marker");
    let start = begin + doc[begin..].find('\n').expect("a line after the marker") + 1;
    let end = doc[start..].find(END).expect("the end marker") + start;
    (start, end)
}

#[test]
fn the_readme_variants_table_is_xarena_list() {
    let path = repo().join("README.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let o = xarena().args(["list", "--format", "md"]).output().unwrap();
    assert!(o.status.success());
    let table = String::from_utf8(o.stdout).unwrap();
    let (start, end) = generated(&doc);
    if doc[start..end] == table {
        return;
    }
    if std::env::var_os("XARENA_UPDATE_DOCS").is_some() {
        let updated = format!("{}{table}{}", &doc[..start], &doc[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "README.md's variants table differs from `xarena list --format md`; rerun with \
         XARENA_UPDATE_DOCS=1 to rewrite it"
    );
}
