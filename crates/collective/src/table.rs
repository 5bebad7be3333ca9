//! Plain-text tables for the CLI: every column as wide as its widest cell (header
//! included), so columns line up whatever the member names, times or sizes.

/// How a column's cells sit in its width.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// For numbers and sizes.
    Right,
}

/// Columns are separated by this many spaces.
const GAP_SPACES: usize = 2;

pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The header line and every row, each ending in a newline, without trailing spaces.
    pub fn render(&self) -> String {
        let cell = |row: &[String], i: usize| row.get(i).map(String::as_str).unwrap_or("").to_string();
        let width = |s: &str| s.chars().count();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let lines: Vec<Vec<String>> = std::iter::once(header)
            .chain(self.rows.iter().map(|r| (0..self.columns.len()).map(|i| cell(r, i)).collect()))
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| lines.iter().map(|l| width(&l[i])).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, c) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str(&" ".repeat(GAP_SPACES));
                }
                let pad = " ".repeat(widths[i] - width(c));
                match self.columns[i].1 {
                    Align::Left => {
                        text.push_str(c);
                        text.push_str(&pad);
                    }
                    Align::Right => {
                        text.push_str(&pad);
                        text.push_str(c);
                    }
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each column starts on every line: the same for all lines when aligned.
    fn starts(line: &str, cells: &[&str]) -> Vec<usize> {
        let mut from = 0;
        cells
            .iter()
            .map(|c| {
                let at = from + line[from..].find(c).unwrap();
                from = at + c.len();
                at
            })
            .collect()
    }

    #[test]
    fn columns_line_up_with_long_cells() {
        let mut t = Table::new(&[
            ("MEMBER", Align::Left),
            ("LAST SEEN", Align::Left),
            ("NODES", Align::Right),
            ("REST", Align::Left),
        ]);
        t.row(vec![
            "a.collective.local (this)".into(),
            "2026-12-03T16:20:05.123Z".into(),
            "3".into(),
            "x y".into(),
        ]);
        t.row(vec![
            "a-much-longer-member-name.example.org".into(),
            "-".into(),
            "12345".into(),
            "".into(),
        ]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        // The left-aligned columns start at the same place on every line.
        let header = starts(lines[0], &["MEMBER", "LAST SEEN", "NODES", "REST"]);
        let first = starts(lines[1], &["a.collective.local (this)", "2026-12-03T16:20:05.123Z", "3", "x y"]);
        let second = starts(lines[2], &["a-much-longer-member-name.example.org", "-", "12345"]);
        assert_eq!(header[..2], first[..2], "{out}");
        assert_eq!(header[..2], second[..2], "{out}");
        assert_eq!(header[3], first[3], "{out}");
        // The right-aligned column ends at the same place on every line.
        assert_eq!(header[2] + "NODES".len(), first[2] + "3".len(), "{out}");
        assert_eq!(header[2] + "NODES".len(), second[2] + "12345".len(), "{out}");
        // Columns never touch, and lines carry no trailing blanks.
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{out:?}");
        assert!(lines[2].contains("a-much-longer-member-name.example.org  -"), "{out}");
    }
}
