//! `labels.csv`: one row per image, the file name then one 0/1 column per label.

use std::collections::HashMap;
use std::path::{Component, Path};

use crate::error::{Error, Result};

/// The content of a `labels.csv` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelTable {
    /// Label names, from the header after the file-name column.
    pub label_names: Vec<String>,
    /// Image file names relative to `images/`, in file order.
    pub files: Vec<String>,
    /// `[files.len() * label_names.len()]` row-major, each 0 or 1.
    pub labels: Vec<u8>,
    /// The 1-based line of each row in the file, for error messages about that row.
    pub lines: Vec<u64>,
}

impl LabelTable {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when there are no rows (never the case for a table read from a file).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Number of label columns.
    pub fn num_labels(&self) -> usize {
        self.label_names.len()
    }
}

/// Reads a `labels.csv` file.
///
/// The header holds a name for the file column (any) and one name per label. The reader
/// tolerates a UTF-8 byte-order mark, CRLF line ends, spaces around fields, quoted fields and
/// blank lines. Every problem is an [`Error::Csv`] naming the file and the 1-based line: an
/// empty file, a header with fewer than two columns, an empty, duplicate or multi-line label
/// name, a header
/// without rows, a row with the wrong number of columns, a value other than `0` or `1`, an empty,
/// absolute or `..` file name, and a file name listed twice.
pub fn read_labels_csv(path: &Path) -> Result<LabelTable> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_labels_csv(&bytes, path)
}

/// Parses the bytes of a `labels.csv` file; `path` only names the file in errors.
///
/// See [`read_labels_csv`] for the accepted format.
pub fn parse_labels_csv(bytes: &[u8], path: &Path) -> Result<LabelTable> {
    let csv_error = |line: u64, detail: String| Error::Csv {
        path: path.to_owned(),
        line,
        detail,
    };
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        let detail = "empty file; expected a header like `file,label_a,label_b`".to_string();
        return Err(csv_error(1, detail));
    }

    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        csv_error(line, "not valid UTF-8".to_string())
    })?;
    let records = split_records(text).map_err(|(line, detail)| csv_error(line, detail))?;

    let mut header: Option<(u64, usize)> = None;
    let mut table = LabelTable {
        label_names: vec![],
        files: vec![],
        labels: vec![],
        lines: vec![],
    };
    let mut first_line_of: HashMap<String, u64> = HashMap::new();

    for (line, fields) in records {
        // The first non-blank record is the header.
        let Some((_, columns)) = header else {
            table.label_names = parse_header(&fields).map_err(|d| csv_error(line, d))?;
            header = Some((line, fields.len()));
            continue;
        };

        if fields.len() != columns {
            let detail = format!(
                "expected {columns} columns as in the header, found {}",
                fields.len()
            );
            return Err(csv_error(line, detail));
        }
        check_file_name(&fields[0]).map_err(|d| csv_error(line, d))?;
        // `./a.png` and `a//b.png` name the same files as `a.png` and `a/b.png`: one spelling,
        // so the duplicate check and the folder listing see them as the same image.
        let file = &normal_file_name(&fields[0]);
        if file.is_empty() {
            return Err(csv_error(line, format!("'{}' names no file", fields[0])));
        }
        if let Some(first) = first_line_of.insert(file.clone(), line) {
            let detail = format!("duplicate file name '{file}' (first listed on line {first})");
            return Err(csv_error(line, detail));
        }
        for (value, name) in fields[1..].iter().zip(&table.label_names) {
            let bit = match value.as_str() {
                "0" => 0,
                "1" => 1,
                _ => {
                    let detail = format!("label '{name}': expected 0 or 1, found '{value}'");
                    return Err(csv_error(line, detail));
                }
            };
            table.labels.push(bit);
        }
        table.files.push(file.clone());
        table.lines.push(line);
    }

    match header {
        None => Err(csv_error(1, "empty file; expected a header".to_string())),
        Some((line, _)) if table.files.is_empty() => Err(csv_error(
            line,
            "header only: the file has no data rows".to_string(),
        )),
        Some(_) => Ok(table),
    }
}

/// Label names from the header fields, or what is wrong with them.
fn parse_header(fields: &[String]) -> std::result::Result<Vec<String>, String> {
    if fields.len() < 2 {
        return Err(format!(
            "the header has {} column(s); expected the file-name column and at least one label",
            fields.len()
        ));
    }
    let names = fields[1..].to_vec();
    let mut column_of: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let column = i + 2;
        if name.is_empty() {
            return Err(format!("label column {column} has an empty name"));
        }
        // Saved models list label names one per line.
        if name.contains(['\n', '\r']) {
            return Err(format!(
                "label column {column}'s name {name:?} spans lines (an unclosed quote?)"
            ));
        }
        if let Some(first) = column_of.insert(name, column) {
            return Err(format!(
                "duplicate label name '{name}' (columns {first} and {column})"
            ));
        }
    }
    Ok(names)
}

/// A file name must stay inside `images/`: relative, not empty, no `..`.
pub(crate) fn check_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty file name".to_string());
    }
    let escapes = Path::new(name).components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    });
    if escapes {
        return Err(format!(
            "file name '{name}' must be relative to images/ without '..'"
        ));
    }
    Ok(())
}

/// `name`'s path components joined by `/`, without `.` components or repeated separators.
fn normal_file_name(name: &str) -> String {
    Path::new(name)
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One CSV record: the 1-based line it starts on and its fields.
type Record = (u64, Vec<String>);

/// Splits CSV text into records, each with the 1-based line it starts on; blank lines are
/// dropped.
///
/// Written by hand rather than with the `csv` crate's reader because that reader treats a quote
/// after leading spaces as a literal character and reports line numbers that drift with CRLF
/// and blank lines. Fields are trimmed of spaces and tabs outside quotes; inside quotes, `""`
/// is a quote and line breaks are kept. Errors carry a line and a message.
fn split_records(text: &str) -> std::result::Result<Vec<Record>, (u64, String)> {
    #[derive(PartialEq)]
    enum Field {
        /// Outside quotes, before any quote.
        Plain,
        /// Inside quotes that opened on the given line.
        Quoted(u64),
        /// After the closing quote: only spaces may follow.
        Closed,
    }
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut state = Field::Plain;
    let (mut line, mut record_line) = (1u64, 1u64);
    let mut chars = text.chars().peekable();

    let finish_field = |field: &mut String, state: &mut Field, fields: &mut Vec<String>| {
        let value = if *state == Field::Plain {
            field.trim_matches(is_padding).to_string()
        } else {
            field.clone()
        };
        fields.push(value);
        field.clear();
        *state = Field::Plain;
    };
    while let Some(c) = chars.next() {
        match (&state, c) {
            (Field::Quoted(_), '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (Field::Quoted(_), '"') => state = Field::Closed,
            (Field::Quoted(_), c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (_, ',') => finish_field(&mut field, &mut state, &mut fields),
            (_, '\r') if chars.peek() == Some(&'\n') => {}
            (_, '\n') => {
                finish_field(&mut field, &mut state, &mut fields);
                let record = std::mem::take(&mut fields);
                if !(record.len() == 1 && record[0].is_empty()) {
                    records.push((record_line, record));
                }
                line += 1;
                record_line = line;
            }
            (Field::Plain, '"') if field.trim_matches(is_padding).is_empty() => {
                field.clear();
                state = Field::Quoted(line);
            }
            (Field::Closed, c) if c == ' ' || c == '\t' => {}
            (Field::Closed, c) => {
                return Err((line, format!("unexpected '{c}' after a closing quote")));
            }
            (Field::Plain, c) => field.push(c),
        }
    }
    if let Field::Quoted(opened) = state {
        return Err((opened, "quote opened here is never closed".to_string()));
    }
    if !field.trim_matches(is_padding).is_empty() || !fields.is_empty() || state == Field::Closed {
        finish_field(&mut field, &mut state, &mut fields);
        records.push((record_line, fields));
    }
    Ok(records)
}

/// Writes a `labels.csv` file atomically: header `file,<label names>`, then one row per file.
///
/// `labels` is `[files.len() * label_names.len()]` row-major and must hold only 0 and 1; names
/// are quoted where CSV needs it. Lines end with `\n`.
///
/// # Errors
/// As [`format_labels_csv`], and [`Error::Io`] when the file cannot be written.
pub fn write_labels_csv<S: AsRef<str>>(
    path: &Path,
    label_names: &[S],
    files: &[String],
    labels: &[u8],
) -> Result<()> {
    let bytes = format_labels_csv(label_names, files, labels)?;
    crate::io::write_atomic(path, &bytes)
}

/// The bytes of a `labels.csv` file, as [`write_labels_csv`] writes them; what
/// [`parse_labels_csv`] reads back into the same table.
///
/// # Errors
/// [`Error::InvalidArgument`] for no labels, a label buffer whose length is not
/// `files.len() * label_names.len()`, or a value other than 0 and 1.
pub fn format_labels_csv<S: AsRef<str>>(
    label_names: &[S],
    files: &[String],
    labels: &[u8],
) -> Result<Vec<u8>> {
    let num_labels = label_names.len();
    if num_labels == 0 {
        return Err(Error::InvalidArgument(
            "labels.csv needs at least one label".into(),
        ));
    }
    if labels.len() != files.len() * num_labels {
        return Err(Error::InvalidArgument(format!(
            "labels.csv: {} values for {} files x {num_labels} labels",
            labels.len(),
            files.len()
        )));
    }
    if let Some(bad) = labels.iter().find(|&&v| v > 1) {
        return Err(Error::InvalidArgument(format!(
            "labels.csv: label value {bad} is not 0/1"
        )));
    }

    let mut text = String::with_capacity(files.len() * (16 + 2 * num_labels));
    let header = std::iter::once("file").chain(label_names.iter().map(AsRef::as_ref));
    push_record(&mut text, header);
    for (file, row) in files.iter().zip(labels.chunks_exact(num_labels)) {
        let values = row.iter().map(|&v| if v == 1 { "1" } else { "0" });
        push_record(&mut text, std::iter::once(file.as_str()).chain(values));
    }
    Ok(text.into_bytes())
}

/// Spaces and tabs around a field outside quotes are not part of it.
fn is_padding(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Appends one CSV record and its `\n`, quoting exactly the fields that [`parse_labels_csv`]
/// would otherwise read differently: those holding a comma, quote or line break, those with
/// padding at either end (trimmed when unquoted), and empty ones.
fn push_record<'a>(text: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            text.push(',');
        }
        let quote = field.is_empty()
            || field.contains([',', '"', '\n', '\r'])
            || field.starts_with(is_padding)
            || field.ends_with(is_padding);
        if quote {
            text.push('"');
            text.push_str(&field.replace('"', "\"\""));
            text.push('"');
        } else {
            text.push_str(field);
        }
    }
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LabelTable> {
        parse_labels_csv(text.as_bytes(), Path::new("t/labels.csv"))
    }

    /// Asserts a CSV error at `line` whose message contains `needle`, and that the file is named.
    fn expect_error(text: &str, line: u64, needle: &str) {
        let err = parse(text).expect_err(text);
        let message = err.to_string();
        match err {
            Error::Csv { line: got, .. } => assert_eq!(got, line, "{message}"),
            other => panic!("expected a CSV error, got {other:?}"),
        }
        assert!(
            message.starts_with(&format!("t/labels.csv:{line}: ")),
            "{message}"
        );
        assert!(message.contains(needle), "'{message}' lacks '{needle}'");
    }

    #[test]
    fn parses_plain_file() {
        let t = parse("file,cat,dog\na.png,1,0\nb.png,0,1\nc.png,1,1\n").unwrap();
        assert_eq!(t.label_names, ["cat", "dog"]);
        assert_eq!(t.files, ["a.png", "b.png", "c.png"]);
        assert_eq!(t.labels, [1, 0, 0, 1, 1, 1]);
        assert_eq!(t.lines, [2, 3, 4]);
    }

    #[test]
    fn tolerates_bom_crlf_spaces_quotes_blank_lines() {
        let text =
            "\u{feff}file , \"cat, big\" ,  \"dog\"\r\n\r\n \"a b.png\" , 1 ,0\r\nc.png,0, 1 \r\n";
        let t = parse(text).unwrap();
        assert_eq!(t.label_names, ["cat, big", "dog"]);
        assert_eq!(t.files, ["a b.png", "c.png"]);
        assert_eq!(t.labels, [1, 0, 0, 1]);
        assert_eq!(t.lines, [3, 4]);
    }

    #[test]
    fn quoted_line_breaks_keep_line_numbers_right() {
        let t =
            parse("file,a,b\n\"two\nlines.png\",1,1\n\"a \"\"q\"\".png\",1,0\r\n\n\nb.png,0,0\n")
                .unwrap();
        assert_eq!(t.label_names, ["a", "b"]);
        assert_eq!(t.files, ["two\nlines.png", "a \"q\".png", "b.png"]);
        assert_eq!(t.lines, [2, 4, 7]);
        expect_error("file,x\n\"a\nb.png\",2\n", 2, "found '2'");
        // A label name may not span lines: saved models list label names one per line.
        expect_error("file,\"x\ny\"\na.png,1\n", 1, "spans lines");
    }

    #[test]
    fn no_trailing_newline() {
        let t = parse("file,x\na.png,1").unwrap();
        assert_eq!(t.labels, [1]);
    }

    #[test]
    fn rejects_bad_files() {
        expect_error("", 1, "empty file");
        expect_error("\u{feff}\r\n  \n", 1, "empty file");
        expect_error("file,cat\n", 1, "header only");
        expect_error("file,cat\r\n\r\n", 1, "header only");
        expect_error("file\na.png\n", 1, "1 column(s)");
        expect_error(
            "file,cat,cat\na.png,1,0\n",
            1,
            "duplicate label name 'cat' (columns 2 and 3)",
        );
        expect_error(
            "file,cat,\na.png,1,0\n",
            1,
            "label column 3 has an empty name",
        );
        expect_error(
            "file,cat,dog\na.png,1,0\nb.png,1\n",
            3,
            "expected 3 columns",
        );
        expect_error("file,cat,dog\na.png,1,0,1\n", 2, "found 4");
        expect_error(
            "file,cat\na.png,2\n",
            2,
            "label 'cat': expected 0 or 1, found '2'",
        );
        expect_error("file,cat\na.png,yes\n", 2, "found 'yes'");
        expect_error("file,cat\na.png,\n", 2, "found ''");
        expect_error("file,cat\na.png,0.5\n", 2, "found '0.5'");
        expect_error(
            "file,cat\na.png,1\nb.png,0\na.png,0\n",
            4,
            "duplicate file name 'a.png' (first listed on line 2)",
        );
        expect_error("file,cat\n,1\n", 2, "empty file name");
        expect_error("file,cat\n../x.png,1\n", 2, "without '..'");
        expect_error(
            "file,cat\na.png,1\n./a.png,0\n",
            3,
            "duplicate file name 'a.png'",
        );
        expect_error(
            "file,cat\nd/a.png,1\nd//./a.png,0\n",
            3,
            "duplicate file name 'd/a.png'",
        );
        expect_error("file,cat\n./,1\n", 2, "names no file");
        expect_error("file,cat\n/etc/x.png,1\n", 2, "without '..'");
        expect_error("file,cat\na.png,1\n\"b.png,0\n", 3, "never closed");
        expect_error(
            "file,cat\n\"a\"x.png,1\n",
            2,
            "unexpected 'x' after a closing quote",
        );
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let bytes = b"file,cat\na.png,1\n\xff\xfe.png,0\n";
        let err = parse_labels_csv(bytes, Path::new("t/labels.csv")).unwrap_err();
        assert!(err.to_string().starts_with("t/labels.csv:3: "), "{err}");
    }

    #[test]
    fn format_quotes_what_parsing_would_change() {
        let files = vec![
            "plain.png".to_string(),
            " lead.png".to_string(),
            "trail.png\t".to_string(),
            "a,b \"q\".png".to_string(),
            "line\nbreak.png".to_string(),
        ];
        let bytes =
            format_labels_csv(&["x", " y"], &files, &[1, 0, 0, 1, 1, 1, 0, 0, 1, 0]).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "file,x,\" y\"\nplain.png,1,0\n\" lead.png\",0,1\n\"trail.png\t\",1,1\n\
             \"a,b \"\"q\"\".png\",0,0\n\"line\nbreak.png\",1,0\n"
        );
        let t = parse_labels_csv(&bytes, Path::new("t/labels.csv")).unwrap();
        assert_eq!(t.label_names, ["x", " y"]);
        assert_eq!(t.files, files);
        // Only spaces and tabs are padding: other white space is kept, quoted or not.
        let t = parse("file,x\n\u{a0}a.png\u{2003},1\n").unwrap();
        assert_eq!(t.files, ["\u{a0}a.png\u{2003}"]);
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("labelwise-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels.csv");
        let files = vec!["a.png".to_string(), "b, c.png".to_string()];
        write_labels_csv(&path, &["x", "y \"q\""], &files, &[1, 0, 1, 1]).unwrap();
        let t = read_labels_csv(&path).unwrap();
        assert_eq!(t.label_names, ["x", "y \"q\""]);
        assert_eq!(t.files, files);
        assert_eq!(t.labels, [1, 0, 1, 1]);
        assert!(write_labels_csv(&path, &["x"], &files, &[1, 2]).is_err());
        assert!(write_labels_csv(&path, &["x"], &files, &[1]).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
