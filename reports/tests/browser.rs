//! The HTML leaderboard in a real browser (headless Chromium, installed by
//! ci/setup-browser.sh): its tables and plots are in the rendered DOM, a `<script>` label
//! from a results file did not run, and clicking a header sorts the rows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{records, VARIANTS};
use xarena_reports::Report;

/// The browser, installed by the set-up script if missing. Fails, naming the script,
/// where it cannot be installed.
fn chromium() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/setup-browser.sh");
    let out = Command::new("bash").arg(&script).output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .lines()
                .last()
                .unwrap_or(""),
        ),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            panic!(
                "this test needs headless Chromium: run `bash ci/setup-browser.sh` (it \
                 installs Debian's chromium package with apt-get, as root) or put a \
                 chromium on PATH. The script said: {why}"
            )
        }
    }
}

/// The DOM after the page's scripts ran.
fn dump_dom(browser: &Path, page: &Path) -> String {
    let profile = page.with_extension("profile");
    let o = Command::new(browser)
        .args([
            "--headless",
            // Root in CI containers: Chromium's sandbox refuses to start as root.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium starts");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn page(name: &str, html: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xarena-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, html).unwrap();
    path
}

#[test]
fn the_page_renders_its_tables_and_plots_and_runs_no_script_from_the_results() {
    let browser = chromium();
    let html = Report::new(records(), Vec::new()).html().unwrap();
    let dom = dump_dom(&browser, &page("report.html", &html));
    // The label `<script>document.title='pwned'</script>` would have set the title.
    assert!(dom.contains("<title>xarena report</title>"), "{dom}");
    assert!(!dom.contains("pwned</title>"));
    assert!(dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"));
    assert!(!dom.contains("<img"), "the environment string stayed text");
    for (label, ..) in VARIANTS.iter().filter(|v| !v.0.contains('<')) {
        assert!(dom.contains(&format!("<td>{label}</td>")), "{label}");
    }
    // Two settings: latency, memory and compute tables, each a row per variant.
    assert!(dom.matches("<tr>").count() >= 2 * 3 * VARIANTS.len());
    assert_eq!(
        dom.matches("<svg").count(),
        4,
        "latency and memory plots per setting"
    );
    assert!(dom.contains("sequence length N"), "plot text is in the DOM");
}

#[test]
fn clicking_a_header_sorts_the_rows() {
    let browser = chromium();
    let html = Report::new(records(), Vec::new()).html().unwrap();
    // The test clicks the first latency table's N=1024 header twice (descending), as a
    // reader would.
    let click = "<script>var table = Array.prototype.find.call( \
        document.querySelectorAll('table'), function (t) { \
        return t.rows[0].cells[0].textContent === 'latency (speed-up)'; }); \
        var th = Array.prototype.find.call(table.rows[0].cells, \
        function (h) { return h.textContent === 'N=1024'; }); th.click(); th.click(); \
        document.body.setAttribute('data-order', Array.prototype.map.call( \
        th.closest('table').tBodies[0].rows, function (r) { return r.cells[0].textContent; \
        }).join('|'));</script></body>";
    let dom = dump_dom(
        &browser,
        &page("sorted.html", &html.replace("</body>", click)),
    );
    let order = dom
        .split("data-order=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the click script ran");
    // Latencies at 1024 (fixture): vanilla 40, performer 30, sdpa 20, linformer 18, local 16 ms.
    let labels: Vec<&str> = order.split('|').collect();
    assert_eq!(labels[0], "vanilla", "{order}");
    assert_eq!(labels[1], "performer", "{order}");
    assert_eq!(labels[4], "local(window=64)", "{order}");
}

/// The leaderboard page: the setting selection shows one section and changing it shows
/// another (other rows), every family panel renders as SVG with a band per line, and a
/// row taken from a second run of the same setting names that run.
#[test]
fn the_leaderboard_selection_changes_the_rows_and_plots_have_bands() {
    use std::collections::BTreeMap;
    use xarena_reports::leaderboard::{Leaderboard, RunInput};
    let browser = chromium();
    // Run b measured performer again on the same machine (same environment): joined,
    // with performer's rows labelled by run b.
    let b: Vec<_> = records()
        .into_iter()
        .filter(|r| r.key.variant == "performer")
        .map(|mut r| {
            r.run_id = "second-run".into();
            r.env.git_commit = Some("def456".into());
            r
        })
        .collect();
    let runs = [
        RunInput {
            path: PathBuf::from("runs/first"),
            records: records(),
        },
        RunInput {
            path: PathBuf::from("runs/second"),
            records: b,
        },
    ];
    let lb = Leaderboard::build(&runs, Vec::new(), 0.75, BTreeMap::new(), Vec::new()).unwrap();
    assert_eq!(lb.sections.len(), 2, "forward and train");
    let html = lb.html().unwrap();
    // What a reader sees before and after choosing the second setting: the visible
    // sections and their board's row labels.
    let probe = "<script>(function () { \
        function seen() { return Array.prototype.filter.call( \
          document.querySelectorAll('section.setting'), function (s) { \
          return s.style.display !== 'none'; }).map(function (s) { \
          return s.id + ':' + Array.prototype.map.call(s.querySelectorAll( \
          'table.board tbody tr'), function (tr) { return tr.getAttribute('data-label') + \
          '@' + tr.cells[3].textContent; }).join(','); }).join('|'); } \
        document.body.setAttribute('data-before', seen()); \
        var sel = document.getElementById('setting'); \
        sel.value = sel.options[1].value; sel.dispatchEvent(new Event('change')); \
        document.body.setAttribute('data-after', seen()); \
        var mode = document.querySelector('select.dim[data-dim=mode]'); \
        mode.value = 'forward'; mode.dispatchEvent(new Event('change')); \
        document.body.setAttribute('data-by-mode', seen()); })();</script></body>";
    let dom = dump_dom(
        &browser,
        &page("leaderboard.html", &html.replace("</body>", probe)),
    );
    let attr = |name: &str| {
        dom.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("the probe ran: {name}"))
            .to_string()
    };
    let (before, after) = (attr("data-before"), attr("data-after"));
    assert_eq!(
        before.matches('|').count(),
        0,
        "one section shown: {before}"
    );
    assert_eq!(after.matches('|').count(), 0, "one section shown: {after}");
    assert_ne!(before, after, "the selection changed the rows");
    assert!(
        before.contains("forward") && after.contains("train"),
        "{before} / {after}"
    );
    // Choosing by a dimension (mode) shows that setting's section.
    assert_eq!(
        attr("data-by-mode"),
        before,
        "mode=forward shows the forward section"
    );
    // The joined run is named on the row it supplied.
    assert!(before.contains("performer@[2] run second-run"), "{before}");
    assert!(dom.contains("Joined 2 runs"));
    // Plots render (one family panel per setting, plus none elsewhere) with bands.
    let panels = dom.matches("<figure class=\"panel\"").count();
    assert_eq!(panels, 2, "a panel per family per setting");
    let svg_in_panels = dom
        .split("<figure class=\"panel\"")
        .skip(1)
        .filter(|p| p.contains("<svg") && p.matches("<polygon").count() >= 3)
        .count();
    assert_eq!(svg_in_panels, 2, "every panel an SVG with a band per line");
    assert!(dom.contains("sequence length N"));
    assert!(!dom.contains("pwned</title>"), "labels stayed text");
}
