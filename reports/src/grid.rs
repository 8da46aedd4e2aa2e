//! A table as data (header, rows of cells with an optional numeric sort key), rendered
//! as terminal or Markdown text (comfy-table) or as an HTML table (maud, escaped).

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, Table};
use maud::{html, Markup};
use serde::Serialize;

use crate::table::Style;

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
}

impl Grid {
    pub fn new(header: Vec<String>) -> Self {
        Grid {
            header,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<GridCell>) {
        self.rows.push(row);
    }

    /// Terminal or Markdown text: the first column left-aligned, the others right.
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
        for i in 1..t.column_count() {
            if let Some(col) = t.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        for row in &self.rows {
            t.add_row(row.iter().map(|c| cell(&c.text)));
        }
        t.to_string()
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
    fn markdown_cells_keep_their_pipes_inside() {
        let mut g = Grid::new(vec!["a".into(), "b".into()]);
        g.push(vec!["x|y".into(), "1".into()]);
        let md = g.text(Style::Markdown);
        assert!(md.contains("x\\|y"), "{md}");
        assert_eq!(md.lines().count(), 3);
    }
}
