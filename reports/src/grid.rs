//! A table as data (header, rows of cells with an optional numeric sort key), rendered
//! as terminal or Markdown text (comfy-table) or as an HTML table (maud, escaped).

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, Table};
use maud::{html, Markup};
use serde::Serialize;

use crate::table::{Format, Style};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GridCell {
    pub text: String,
    /// What the HTML table sorts this cell by (the number behind "12.3 ms (2.00x)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<f64>,
}

impl GridCell {
    pub fn new(text: impl Into<String>, sort: Option<f64>) -> Self {
        GridCell {
            text: text.into(),
            sort: sort.filter(|v| v.is_finite()),
        }
    }
}

impl From<String> for GridCell {
    fn from(text: String) -> Self {
        GridCell { text, sort: None }
    }
}

impl From<&str> for GridCell {
    fn from(text: &str) -> Self {
        text.to_string().into()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Grid {
    pub header: Vec<String>,
    pub rows: Vec<Vec<GridCell>>,
    /// Leading columns aligned left in text (at least the first); the rest, numbers, right.
    #[serde(skip)]
    pub left: usize,
}

impl Grid {
    pub fn new(header: Vec<String>) -> Self {
        Grid {
            header,
            rows: Vec::new(),
            left: 1,
        }
    }

    /// Every column aligned left: a table of words rather than numbers.
    pub fn all_left(mut self) -> Self {
        self.left = self.header.len();
        self
    }

    pub fn push(&mut self, row: Vec<GridCell>) {
        self.rows.push(row);
    }

    /// Terminal or Markdown text: the first column (or the first `left`) left-aligned, the
    /// others right.
    pub fn text(&self, style: Style) -> String {
        let mut t = Table::new();
        t.load_preset(match style {
            Style::Terminal => UTF8_FULL_CONDENSED,
            Style::Markdown => ASCII_MARKDOWN,
        });
        // A `|` inside a Markdown cell would end it; HTML in it would be rendered.
        let cell = |text: &str| match style {
            Style::Markdown => style.inline(text).replace('|', "\\|"),
            Style::Terminal => text.to_string(),
        };
        t.set_header(self.header.iter().map(|h| cell(h)));
        for i in self.left.max(1)..t.column_count() {
            if let Some(col) = t.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        for row in &self.rows {
            t.add_row(row.iter().map(|c| cell(&c.text)));
        }
        t.to_string()
    }

    /// The table in `format`: text for `terminal` and `md`, an HTML table, CSV; `json` is
    /// the grid itself (header and rows).
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Terminal => self.text(Style::Terminal),
            Format::Md => self.text(Style::Markdown),
            Format::Html => self.html().into_string(),
            Format::Csv => self.csv(),
            Format::Json => serde_json::to_string_pretty(self).expect("grids serialise"),
        }
    }

    /// CSV: the header, then a line per row (the cells' text).
    pub fn csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let rows = std::iter::once(self.header.clone()).chain(
            self.rows
                .iter()
                .map(|r| r.iter().map(|c| c.text.clone()).collect()),
        );
        for row in rows {
            w.write_record(row).expect("writing to memory");
        }
        String::from_utf8(w.into_inner().expect("writing to memory")).expect("UTF-8 cells")
    }

    /// A sortable HTML table (see the page's script). Every string is escaped by maud.
    /// In a column where some cells have a sort key, cells without one sort last.
    pub fn html(&self) -> Markup {
        let numeric: Vec<bool> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .any(|r| r.get(i).is_some_and(|c| c.sort.is_some()))
            })
            .collect();
        html! {
            table.sortable {
                thead { tr { @for h in &self.header { th title="click to sort" { (h) } } } }
                tbody {
                    @for row in &self.rows {
                        tr {
                            @for (i, c) in row.iter().enumerate() {
                                @if let Some(v) = c.sort {
                                    td data-sort=(v) { (c.text) }
                                } @else if numeric.get(i).copied().unwrap_or(false) {
                                    td data-sort="Infinity" { (c.text) }
                                } @else {
                                    td { (c.text) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_cells_and_headers_and_marks_sort_keys() {
        let mut g = Grid::new(vec!["<b>variant".into(), "N=1".into()]);
        g.push(vec![
            "<script>x()</script>".into(),
            GridCell::new("1 ms", Some(0.001)),
        ]);
        g.push(vec!["a&b".into(), "oom".into()]);
        let h = g.html().into_string();
        assert!(!h.contains("<script>") && !h.contains("<b>"), "{h}");
        assert!(h.contains("&lt;script&gt;x()&lt;/script&gt;"), "{h}");
        assert!(h.contains("a&amp;b"));
        assert!(h.contains(r#"data-sort="0.001""#), "{h}");
        assert!(h.contains(r#"data-sort="Infinity""#), "{h}");
    }

    #[test]
    fn markdown_cells_and_headers_carry_no_html() {
        let mut g = Grid::new(vec!["<b>variant".into(), "N".into()]);
        g.push(vec![
            "<script>alert(1)</script>".into(),
            "<img src=x onerror=alert(1)>".into(),
        ]);
        g.push(vec!["&#60;script&#62;".into(), "< 512".into()]);
        let md = g.text(Style::Markdown);
        for raw in ["<script", "</script", "<img", "<b>", "&#60;"] {
            assert!(!md.contains(raw), "{raw} in\n{md}");
        }
        assert!(md.contains("&lt;script>alert(1)&lt;/script>"), "{md}");
        assert!(md.contains("&amp;#60;"), "{md}");
        // Comparisons are not HTML and stay readable.
        assert!(md.contains("< 512"), "{md}");
        // The terminal shows text as it is.
        assert!(g
            .text(Style::Terminal)
            .contains("<script>alert(1)</script>"));
    }

    #[test]
    fn csv_quotes_what_needs_it_and_formats_are_spelled_once() {
        let mut g = Grid::new(vec!["variant".into(), "N=1".into()]);
        g.push(vec!["local(window=8, global=[3])".into(), "1 ms".into()]);
        assert_eq!(
            g.csv(),
            "variant,N=1\n\"local(window=8, global=[3])\",1 ms\n"
        );
        assert_eq!(g.render(Format::Md), g.text(Style::Markdown));
        let md: Format = clap::ValueEnum::from_str("markdown", false).unwrap();
        assert_eq!(md, Format::Md);
        assert_eq!(md.to_string(), "md");
        let err = Format::Html
            .only("compare", &[Format::Terminal, Format::Md, Format::Json])
            .unwrap_err();
        assert!(err.contains("use terminal, md, json"), "{err}");
    }

    #[test]
    fn markdown_cells_keep_their_pipes_inside() {
        let mut g = Grid::new(vec!["a".into(), "b".into()]);
        g.push(vec!["x|y".into(), "1".into()]);
        let md = g.text(Style::Markdown);
        assert!(md.contains("x\\|y"), "{md}");
        assert_eq!(md.lines().count(), 3);
    }
}
