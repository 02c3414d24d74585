//! The plain-text tables that edupool's tools print for people
//! (`edupoolctl`, `edupool-agent inventory`, `edupool-sim`), so that every
//! table looks the same:
//!
//! ```text
//! NAME  GPUS  STATE
//! j-1   2     running
//! j-10  16    pending
//! ```
//!
//! Columns are two spaces apart and as wide as their widest cell, counted
//! in characters (not display columns: a wide CJK character counts as
//! one). Cells are left-aligned unless a column is marked right-aligned.
//! Trailing spaces are trimmed, so the last column is never padded.
//! Control characters in cells become spaces, so that a row stays one line.
//!
//! `units` reads and prints the CPU and memory amounts those tables show.

#![forbid(unsafe_code)]

pub mod units;

/// Rows of cells under a header, rendered as aligned text.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<usize>,
    indent: usize,
}

impl Table {
    /// A table with these column titles and no rows.
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            header: header.into_iter().map(|c| one_line(&c.into())).collect(),
            rows: Vec::new(),
            right: Vec::new(),
            indent: 0,
        }
    }

    /// Aligns these columns (counted from 0) to the right, as numbers
    /// usually are; the header's titles too.
    pub fn align_right<I>(&mut self, columns: I) -> &mut Self
    where
        I: IntoIterator<Item = usize>,
    {
        self.right.extend(columns);
        self
    }

    /// Starts every line with this many spaces, for a table inside an
    /// indented report.
    pub fn indent(&mut self, spaces: usize) -> &mut Self {
        self.indent = spaces;
        self
    }

    /// Adds a row; missing cells are empty, extra cells are kept.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows
            .push(cells.into_iter().map(|c| one_line(&c.into())).collect());
        self
    }

    /// Whether the table has no rows (a header alone does not count).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, header first, each line ending in `\n`.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for line in self.lines() {
            let mut text = " ".repeat(self.indent);
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = std::iter::repeat_n(' ', width - cell.chars().count());
                if self.right.contains(&i) {
                    text.extend(pad);
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.extend(pad);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    fn lines(&self) -> impl Iterator<Item = &Vec<String>> {
        std::iter::once(&self.header).chain(&self.rows)
    }

    /// Each column's width: its widest cell, in characters.
    fn widths(&self) -> Vec<usize> {
        let columns = self.lines().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in self.lines() {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        widths
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_two_spaces_apart_and_the_last_is_not_padded() {
        let mut t = Table::new(["A", "LONGER", "C"]);
        t.row(["xxxx", "y", ""]);
        t.row(["z", "", "last"]);
        assert_eq!(t.render(), "A     LONGER  C\nxxxx  y\nz             last\n");
    }

    #[test]
    fn right_aligned_columns_pad_on_the_left() {
        let mut t = Table::new(["policy", "util", "jobs"]);
        t.align_right([1, 2]);
        t.row(["best-fit", "97.5%", "3"]);
        t.row(["fgd", "100.0%", "12"]);
        assert_eq!(
            t.render(),
            "policy      util  jobs\n\
             best-fit   97.5%     3\n\
             fgd       100.0%    12\n"
        );
    }

    #[test]
    fn an_indented_table_starts_every_line_with_the_spaces() {
        let mut t = Table::new(["member", "GPUs"]);
        t.indent(2).align_right([1]);
        t.row(["a", "16"]);
        assert_eq!(t.render(), "  member  GPUs\n  a         16\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(["NAME", "STATE"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "NAME  STATE\n");
        let none = Table::new(Vec::<String>::new());
        assert_eq!(none.render(), "\n");
    }

    #[test]
    fn short_and_long_rows_keep_every_cell() {
        let mut t = Table::new(["A", "B"]);
        t.row(["1"]);
        t.row(["2", "b", "extra"]);
        assert!(!t.is_empty());
        assert_eq!(t.render(), "A  B\n1\n2  b  extra\n");
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut t = Table::new(["TENANT", "GPUS"]);
        t.row(["zürich-ü", "4"]);
        t.row(["浙江大学", "8"]);
        t.row(["hdu", "1"]);
        assert_eq!(
            t.render(),
            "TENANT    GPUS\n\
             zürich-ü  4\n\
             浙江大学      8\n\
             hdu       1\n"
        );
    }

    #[test]
    fn control_characters_become_spaces_so_a_row_stays_one_line() {
        let mut t = Table::new(["ID", "REASON"]);
        t.row(["j-1", "first\nsecond\tthird\r"]);
        assert_eq!(t.render(), "ID   REASON\nj-1  first second third\n");
    }
}
