//! The published report: every format from one fixture run, escaping, the LRA layout,
//! the published figures, accuracy records, and writing a report directory.

mod common;

use common::{latency, memory, records, run_dir, EVIL, LENGTHS, VARIANTS};
use xarena_reports::accuracy::{accuracy_grid, load_accuracy, read_accuracy, training_grid};
use xarena_reports::table::Style;
use xarena_reports::{LoadError, Report, ReportError};

fn report() -> Report {
    Report::new(records(), Vec::new())
}

#[test]
fn json_parses_and_holds_every_case_and_setting() {
    let json: serde_json::Value = serde_json::from_str(&report().json().unwrap()).unwrap();
    assert_eq!(json["report_version"], 1);
    assert_eq!(json["records"].as_array().unwrap().len(), 2 * 3 * 5);
    let settings = json["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 2, "forward and train");
    let row = &settings[0]["rows"][2];
    assert_eq!(row["label"], "local(window=64)");
    let speedup = row["cells"]["2048"]["speedup"].as_f64().unwrap();
    assert!((speedup - latency(0, 2048, false) / latency(2, 2048, false)).abs() < 1e-9);
    assert_eq!(json["lra_layout"].as_array().unwrap().len(), 1);
}

#[test]
fn csv_has_a_header_and_one_row_per_case_the_last_record_winning() {
    let mut recs = records();
    // The same case recorded again (a resumed or merged run): one row, the later one.
    let mut again = recs[0].clone();
    again.latency.as_mut().unwrap().median_s = 123.0;
    recs.push(again);
    let csv = Report::new(recs, Vec::new()).csv().unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    for column in [
        "label",
        "seq_len",
        "mode",
        "status",
        "median_s",
        "speedup_vs_reference",
    ] {
        assert!(header.iter().any(|h| h == column), "{column} in {header:?}");
    }
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 30);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[0][col("median_s")], "123.0");
    // Labels with commas, quotes and tags survive the round trip.
    assert!(rows.iter().any(|r| &r[col("label")] == EVIL));
    let oom = rows.iter().find(|r| &r[col("status")] == "oom").unwrap();
    assert_eq!(&oom[col("message")], "<b>out of memory</b>");
}

#[test]
fn markdown_terminal_and_html_name_every_variant() {
    let r = report();
    let md = r.text(Style::Markdown, true);
    let term = r.text(Style::Terminal, false);
    let html = r.html().unwrap();
    for (label, ..) in VARIANTS {
        let shown = xarena_reports::table::markdown_escape(label);
        assert!(md.contains(&format!("| {shown}")), "markdown lacks {label}");
        assert!(term.contains(label), "terminal lacks {label}");
        if label != EVIL {
            assert!(
                html.contains(&format!("<td>{label}</td>")),
                "html lacks {label}"
            );
        }
    }
    for needle in [
        "## Environment",
        "abc123",
        "exponent (claim)",
        "faster than sdpa from N",
    ] {
        assert!(md.contains(needle), "markdown lacks {needle}");
    }
    assert!(md.contains("![latency](latency-cpu-f32-forward-attention-b1-h8x64.svg)"));
    assert!(
        !r.text(Style::Markdown, false).contains("!["),
        "no links without files"
    );
}

#[test]
fn markdown_carries_no_html_from_results() {
    // GitHub and most viewers render raw HTML inside Markdown.
    let md = report().text(Style::Markdown, true);
    for raw in ["<script", "</script", "<img", "<b>"] {
        assert!(!md.contains(raw), "report.md carries {raw}");
    }
    assert!(md.contains("&lt;script>document.title='pwned'&lt;/script>"));
    assert!(md.contains("&lt;img src=x onerror=alert(1)> CPU"));
}

#[test]
fn html_escapes_everything_that_comes_from_results() {
    let html = report().html().unwrap();
    // Only the page's own sorting script.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(!html.contains("<img") && !html.contains("<b>"));
    assert!(html.contains("&lt;script&gt;document.title="));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; CPU"));
    assert!(html.contains("&lt;b&gt;out of memory") || html.contains(">oom<"));
    // Self-contained: nothing fetched.
    for external in ["src=\"http", "href=\"http", "<link", "@import"] {
        assert!(!html.contains(external), "{external}");
    }
    assert!(html.contains("<svg"), "plots inline");
}

#[test]
fn lra_layout_puts_forward_and_train_side_by_side() {
    let r = report();
    assert_eq!(r.lra.len(), 1);
    let v = &r.lra[0];
    assert_eq!(
        v.heading(),
        "cpu f32, scope attention, batch 1, 8 heads x 64"
    );
    let row = v
        .speed
        .rows
        .iter()
        .find(|row| row[0].text == "sdpa")
        .unwrap();
    let n = LENGTHS.iter().position(|&n| n == 2048).unwrap() + 1;
    let f = latency(0, 2048, false) / latency(1, 2048, false);
    let t = latency(0, 2048, true) / latency(1, 2048, true);
    assert_eq!(row[n].text, format!("{f:.2}x / {t:.2}x"));
    let mem = v
        .memory
        .rows
        .iter()
        .find(|row| row[0].text == "sdpa")
        .unwrap();
    let m = memory(1, 4096, true) as f64 / memory(0, 4096, true) as f64;
    assert!(
        mem[3].text.ends_with(&format!("/ {m:.2}x")),
        "{}",
        mem[3].text
    );
    // The failed training case shows as missing, not as a figure.
    let perf = v
        .speed
        .rows
        .iter()
        .find(|row| row[0].text == "performer")
        .unwrap();
    assert!(perf[3].text.ends_with("/ -"), "{}", perf[3].text);
}

#[test]
fn published_figures_sit_beside_ours_with_both_settings_named() {
    let r = report();
    let lra: Vec<_> = r
        .published
        .iter()
        .filter(|c| c.heading.starts_with("LRA"))
        .collect();
    assert_eq!(lra.len(), 2, "one per setting");
    let train = lra
        .iter()
        .find(|c| c.heading.contains("cpu f32 train"))
        .unwrap();
    assert!(train.heading.contains("TPU v3") && train.heading.contains("training"));
    let header = &train.grid.header;
    assert_eq!(header[1], "LRA 1K");
    assert_eq!(header[2], "ours N=1024");
    assert_eq!(
        header[6], "ours N=4096",
        "3K is nearer 4096 than 2048 in log scale"
    );
    let local = train
        .grid
        .rows
        .iter()
        .find(|row| row[0].text == "local(window=64) (Local Attention)")
        .unwrap();
    assert_eq!(local[1].text, format!("1.14x / {:.2}x", 0.42 / 0.85));
    let ours = latency(0, 1024, true) / latency(2, 1024, true);
    assert!(local[2].text.starts_with(&format!("{ours:.2}x / ")));
    // The FlashAttention table names sdpa, which LRA does not have.
    let fa = r
        .published
        .iter()
        .find(|c| c.heading.starts_with("FlashAttention") && c.heading.contains("train"))
        .unwrap();
    assert!(fa
        .grid
        .rows
        .iter()
        .any(|row| row[0].text == "sdpa (FlashAttention)"));
    assert!(!lra[0]
        .grid
        .rows
        .iter()
        .any(|row| row[0].text.starts_with("sdpa")));
}

#[test]
fn accuracy_records_load_and_make_a_table_and_a_plot() {
    let dir = run_dir("accuracy", true);
    let acc = load_accuracy(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(acc.len(), 6);
    let grid = accuracy_grid(&acc);
    assert_eq!(
        grid.header[1..3],
        ["listops".to_string(), "text".to_string()]
    );
    let vanilla = &grid.rows[0];
    assert_eq!(vanilla[0].text, "vanilla");
    // Two seeds of text (62, 64), and LRA's Transformer figure beside it.
    assert_eq!(vanilla[2].text, "63.00 (64.27), 2 seeds");
    assert_eq!(vanilla[3].text, format!("{:.2}", (36.0 + 63.0) / 2.0));
    let report = Report::load(&[dir]).unwrap();
    assert!(report
        .plots()
        .unwrap()
        .iter()
        .any(|p| p.file == "accuracy-vs-speed.svg"));
    assert!(report.text(Style::Markdown, false).contains("## Accuracy"));
    // No accuracy records: no table, no plot.
    let plain = Report::load(&[run_dir("no-accuracy", false)]).unwrap();
    assert!(!plain
        .plots()
        .unwrap()
        .iter()
        .any(|p| p.file.starts_with("accuracy")));
    assert!(!plain.text(Style::Markdown, false).contains("## Accuracy"));
}

#[test]
fn training_measurements_make_lra_s_efficiency_view() {
    let dir = run_dir("training-speed", true);
    let mut acc = load_accuracy(std::slice::from_ref(&dir)).unwrap();
    assert!(
        training_grid(&acc).is_none(),
        "no record carries measurements"
    );
    for r in acc.iter_mut().filter(|r| r.task == "listops") {
        let (speed, mib) = if r.variant == "vanilla" {
            (4.0, 400)
        } else {
            (10.0, 100)
        };
        r.steps_per_s = Some(speed);
        r.peak_memory_bytes = Some(mib << 20);
    }
    let grid = training_grid(&acc).unwrap();
    assert_eq!(grid.header[1], "listops");
    let performer = grid.rows.iter().find(|r| r[0].text == "performer").unwrap();
    assert_eq!(performer[1].text, "10.0 (2.50x), 100 (0.25x)");
    let vanilla = grid.rows.iter().find(|r| r[0].text == "vanilla").unwrap();
    assert_eq!(vanilla[1].text, "4.0 (1.00x), 400 (1.00x)");
    assert_eq!(vanilla[2].text, "", "no measurements for text");
    // A run at the tiny preset is not LRA's task: no published figure beside it.
    for r in acc.iter_mut().filter(|r| r.variant == "vanilla") {
        r.preset = Some("tiny".into());
    }
    let grid = accuracy_grid(&acc);
    assert_eq!(grid.rows[0][0].text, "vanilla");
    assert_eq!(grid.rows[0][2].text, "63.00, 2 seeds");
    // The header names the paper only while some cell shows its figure.
    assert_eq!(
        grid.header[0], "accuracy % (LRA paper)",
        "performer's is shown"
    );
    for r in acc.iter_mut() {
        r.preset = Some("tiny".into());
    }
    assert_eq!(accuracy_grid(&acc).header[0], "accuracy %");
}

#[test]
fn a_directory_with_accuracy_only_makes_an_accuracy_report() {
    let dir = run_dir("accuracy-only", true);
    std::fs::remove_file(dir.join("results.jsonl")).unwrap();
    let report = Report::load(std::slice::from_ref(&dir)).unwrap();
    assert!(report.records.is_empty());
    let md = report.text(Style::Markdown, false);
    assert!(md.contains("## Accuracy") && md.contains("listops"), "{md}");
    assert!(report.html().unwrap().contains("listops"));
    std::fs::remove_file(dir.join("accuracy.jsonl")).unwrap();
    assert!(Report::load(&[dir]).is_err(), "neither file: an error");
}

#[test]
fn bad_accuracy_files_are_refused_naming_the_line() {
    let dir = run_dir("bad-accuracy", true);
    let file = dir.join("accuracy.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let out_of_range = text.replacen("\"accuracy\": 0.36", "\"accuracy\": 36", 1);
    std::fs::write(&file, &out_of_range).unwrap();
    let e = read_accuracy(&file).unwrap_err().to_string();
    assert!(e.contains(":3:") && e.contains("between 0 and 1"), "{e}");
    std::fs::write(&file, text.replace("\"schema\": 1", "\"schema\": 2")).unwrap();
    let e = Report::load(&[dir]).unwrap_err();
    assert!(
        matches!(e, ReportError::Load(LoadError::Schema { expected: 1, .. })),
        "{e}"
    );
}

#[test]
fn a_missing_or_empty_results_file_is_an_error_naming_it() {
    let e = Report::load(&["/nonexistent/run".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/run"), "{e}");
    let dir = run_dir("empty", false);
    std::fs::write(dir.join("results.jsonl"), "").unwrap();
    let e = Report::load(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no records") && e.contains(&dir.display().to_string()),
        "{e}"
    );
}

#[test]
fn write_dir_refuses_a_non_empty_directory_unless_forced_and_removes_nothing() {
    let dir = run_dir("out", false);
    let r = report();
    // A run directory: its results must survive a report written into it.
    let results = std::fs::read(dir.join("results.jsonl")).unwrap();
    let e = r.write_dir(&dir, false).unwrap_err();
    assert!(matches!(e, ReportError::NotEmpty(_)), "{e}");
    assert!(e.to_string().contains("--force"));
    assert!(!dir.join("report.md").exists(), "nothing written");
    let written = r.write_dir(&dir, true).unwrap();
    assert_eq!(std::fs::read(dir.join("results.jsonl")).unwrap(), results);
    for f in ["report.md", "report.html", "report.csv", "report.json"] {
        assert!(written.contains(&dir.join(f)), "{f}");
    }
    let svgs = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "svg"));
    assert_eq!(
        svgs.count(),
        4,
        "latency and memory for each of two settings"
    );
    // A new directory, nested, is created.
    let fresh = dir.join("a/b");
    r.write_dir(&fresh, false).unwrap();
    assert!(fresh.join("report.html").exists());
    // A file is not a directory.
    let e = r.write_dir(&dir.join("results.jsonl"), true).unwrap_err();
    assert!(matches!(e, ReportError::NotADirectory(_)), "{e}");
}
