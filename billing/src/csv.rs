//! The finance command line's files, as strings: deck and calls CSV parsed, charges CSV rendered.
//!
//! Pure: the binary reads the files and prints the result. Parsing stops at the first problem
//! and names its line and column (both 1-based; a record's line is the line it starts on), so
//! no output is produced from a file that has a malformed row. The dialect is RFC 4180: comma
//! separated, fields optionally in double quotes with `""` for a quote, LF or CRLF line ends,
//! blank lines ignored.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::money::Posting;
use crate::peak::OffPeakWindow;
use crate::rating::{self, Leg, MAX_CALL_DURATION_S};
use crate::tariff::{CompiledTariff, Crossing, PeriodPrices, Prefix, Rate, TariffVersion};

/// The deck file's header, column by column.
pub const DECK_COLUMNS: [&str; 10] = [
    "prefix",
    "first_interval_s",
    "next_interval_s",
    "price_per_min",
    "next_price_per_min",
    "connection_fee",
    "free_seconds",
    "grace_period_s",
    "offpeak_price_per_min",
    "post_call_surcharge_pct",
];

/// The calls file's header.
pub const CALLS_COLUMNS: [&str; 4] = ["call_id", "destination", "answered_at", "duration_s"];

/// The charges file's header.
pub const OUTPUT_COLUMNS: [&str; 5] = ["call_id", "prefix", "billed_s", "amount", "explanation"];

/// The most records a file may hold.
pub const MAX_RECORDS: usize = 10_000_000;

/// Where a file is malformed and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for CsvError {}

fn error(line: usize, column: usize, message: impl Into<String>) -> CsvError {
    CsvError {
        line,
        column,
        message: message.into(),
    }
}

/// One record: the line it starts on and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Splits CSV text into records.
pub fn parse_records(text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    loop {
        // Skip blank lines between records.
        while let Some(&c) = chars.peek() {
            if c == '\n' {
                line += 1;
                chars.next();
            } else if c == '\r' {
                chars.next();
            } else {
                break;
            }
        }
        if chars.peek().is_none() {
            return Ok(records);
        }
        if records.len() >= MAX_RECORDS {
            return Err(error(line, 1, format!("more than {MAX_RECORDS} records")));
        }
        let record_line = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        loop {
            let column = fields.len() + 1;
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            field.push('"');
                        } else {
                            closed = true;
                            break;
                        }
                    } else {
                        if c == '\n' {
                            line += 1;
                        }
                        field.push(c);
                    }
                }
                if !closed {
                    return Err(error(record_line, column, "unterminated quoted field"));
                }
                match chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => {}
                    Some(other) => {
                        return Err(error(
                            line,
                            column,
                            format!("unexpected '{other}' after a closing quote"),
                        ))
                    }
                }
            }
            // Unquoted part (or what follows a quoted one, which the check above limits).
            let mut end_of_record = false;
            loop {
                match chars.next() {
                    None => {
                        end_of_record = true;
                        break;
                    }
                    Some(',') => break,
                    Some('\n') => {
                        line += 1;
                        end_of_record = true;
                        break;
                    }
                    Some('\r') if chars.peek() == Some(&'\n') => {}
                    Some('"') => {
                        return Err(error(line, column, "quote inside an unquoted field"));
                    }
                    Some(c) => field.push(c),
                }
            }
            fields.push(std::mem::take(&mut field));
            if end_of_record {
                break;
            }
        }
        records.push(Record {
            line: record_line,
            fields,
        });
    }
}

fn check_header(records: &[Record], expected: &[&str]) -> Result<(), CsvError> {
    let Some(header) = records.first() else {
        return Err(error(
            1,
            1,
            format!("empty file, expected header {}", expected.join(",")),
        ));
    };
    for (index, name) in expected.iter().enumerate() {
        match header.fields.get(index) {
            Some(found) if found.trim() == *name => {}
            Some(found) => {
                return Err(error(
                    header.line,
                    index + 1,
                    format!("header column {} is '{found}', expected '{name}'", index + 1),
                ))
            }
            None => {
                return Err(error(
                    header.line,
                    index + 1,
                    format!("header is missing column '{name}'"),
                ))
            }
        }
    }
    if header.fields.len() > expected.len() {
        return Err(error(
            header.line,
            expected.len() + 1,
            "header has more columns than expected",
        ));
    }
    Ok(())
}

fn check_width(record: &Record, width: usize) -> Result<(), CsvError> {
    if record.fields.len() != width {
        return Err(error(
            record.line,
            record.fields.len().min(width) + 1,
            format!("expected {width} fields, found {}", record.fields.len()),
        ));
    }
    Ok(())
}

/// A typed field reader for one record.
struct Fields<'r> {
    record: &'r Record,
    names: &'static [&'static str],
}

impl Fields<'_> {
    fn text(&self, column: usize) -> &str {
        // check_width ran first, so every column below the width exists.
        self.record.fields[column - 1].trim()
    }

    fn fail(&self, column: usize, message: impl fmt::Display) -> CsvError {
        error(
            self.record.line,
            column,
            format!("{}: {message}", self.names[column - 1]),
        )
    }

    fn u32(&self, column: usize) -> Result<u32, CsvError> {
        let text = self.text(column);
        u32::from_str(text).map_err(|_| self.fail(column, format!("'{text}' is not a whole number of seconds")))
    }

    fn optional_u32(&self, column: usize) -> Result<u32, CsvError> {
        if self.text(column).is_empty() {
            Ok(0)
        } else {
            self.u32(column)
        }
    }

    fn decimal(&self, column: usize) -> Result<Decimal, CsvError> {
        let text = self.text(column);
        parse_decimal(text).map_err(|message| self.fail(column, message))
    }

    fn optional_decimal(&self, column: usize) -> Result<Option<Decimal>, CsvError> {
        if self.text(column).is_empty() {
            Ok(None)
        } else {
            self.decimal(column).map(Some)
        }
    }
}

/// Parses a plain decimal (`0.012`, `-3`, no exponent, no thousands separators).
pub fn parse_decimal(text: &str) -> Result<Decimal, String> {
    let plain = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    match Decimal::from_str(text) {
        Ok(value) if plain => Ok(value),
        _ => Err(format!("'{text}' is not a decimal number")),
    }
}

/// How a deck file becomes a tariff version: what the file does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeckOptions {
    pub tariff_id: Uuid,
    pub currency: String,
    pub effective_from: DateTime<Utc>,
    pub offpeak_window: Option<OffPeakWindow>,
    pub crossing: Crossing,
    pub posting: Posting,
}

impl Default for DeckOptions {
    fn default() -> Self {
        DeckOptions {
            tariff_id: Uuid::nil(),
            // ISO 4217's code for "no currency": the command line rates in the deck's units.
            currency: "XXX".to_string(),
            effective_from: DateTime::<Utc>::MIN_UTC,
            offpeak_window: None,
            crossing: Crossing::WholeCall,
            posting: Posting::default(),
        }
    }
}

/// Parses a deck file into a validated tariff version.
pub fn parse_deck(text: &str, options: &DeckOptions) -> Result<TariffVersion, CsvError> {
    let records = parse_records(text)?;
    check_header(&records, &DECK_COLUMNS)?;
    let mut rates = Vec::with_capacity(records.len().saturating_sub(1));
    let mut index = crate::tariff::PrefixIndex::default();
    for record in &records[1..] {
        check_width(record, DECK_COLUMNS.len())?;
        let fields = Fields {
            record,
            names: &DECK_COLUMNS,
        };
        let prefix = Prefix::parse(fields.text(1)).map_err(|m| error(record.line, 1, m))?;
        let first_price = fields.decimal(4)?;
        let offpeak = fields.optional_decimal(9)?.map(|price| PeriodPrices {
            first_price_per_minute: price,
            next_price_per_minute: price,
        });
        let rate = Rate {
            prefix,
            first_interval_s: fields.u32(2)?,
            next_interval_s: fields.u32(3)?,
            first_price_per_minute: first_price,
            next_price_per_minute: fields.optional_decimal(5)?.unwrap_or(first_price),
            connection_fee: fields.optional_decimal(6)?.unwrap_or_default(),
            free_seconds: fields.optional_u32(7)?,
            grace_period_s: fields.optional_u32(8)?,
            post_call_surcharge_pct: fields.optional_decimal(10)?.unwrap_or_default(),
            offpeak,
        };
        if let Err(problem) = rate.validate() {
            let column = DECK_COLUMNS
                .iter()
                .position(|name| *name == problem.field)
                .map(|i| i + 1)
                // The off-peak next price has no column of its own: it comes from column 9.
                .unwrap_or(9);
            return Err(fields.fail(column, &problem.message));
        }
        // Bounded by MAX_RECORDS, far below u32::MAX.
        if index.insert(prefix, rates.len() as u32).is_some() {
            return Err(error(record.line, 1, format!("prefix: {prefix} appears twice")));
        }
        rates.push(rate);
    }
    let version = TariffVersion {
        tariff_id: options.tariff_id,
        version: 1,
        effective_from: options.effective_from,
        currency: options.currency.clone(),
        rates,
        offpeak_window: options.offpeak_window,
        crossing: options.crossing,
        posting: options.posting,
    };
    version
        .validate()
        .map_err(|rejection| error(1, 1, rejection.to_string()))?;
    Ok(version)
}

/// One row of a calls file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    pub line: usize,
    pub call_id: String,
    pub destination: String,
    pub answered_at: DateTime<Utc>,
    pub duration_s: u32,
}

/// Parses a calls file.
pub fn parse_calls(text: &str) -> Result<Vec<CallRow>, CsvError> {
    let records = parse_records(text)?;
    check_header(&records, &CALLS_COLUMNS)?;
    let mut calls = Vec::with_capacity(records.len().saturating_sub(1));
    for record in &records[1..] {
        check_width(record, CALLS_COLUMNS.len())?;
        let fields = Fields {
            record,
            names: &CALLS_COLUMNS,
        };
        let call_id = fields.text(1);
        if call_id.is_empty() {
            return Err(fields.fail(1, "must not be empty"));
        }
        let destination = fields.text(2);
        if crate::tariff::normalize_destination(destination).is_none() {
            return Err(fields.fail(
                2,
                format!("'{destination}' is not an E.164 number (digits, optional leading +)"),
            ));
        }
        let answered_at = parse_time(fields.text(3)).map_err(|m| fields.fail(3, m))?;
        let duration_s = fields.u32(4)?;
        if duration_s > MAX_CALL_DURATION_S {
            return Err(fields.fail(4, format!("{duration_s} exceeds the limit of {MAX_CALL_DURATION_S} s")));
        }
        calls.push(CallRow {
            line: record.line,
            call_id: call_id.to_string(),
            destination: destination.to_string(),
            answered_at,
            duration_s,
        });
    }
    Ok(calls)
}

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("'{text}' is not an RFC 3339 time"))
}

/// One row of the charges file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRow {
    pub call_id: String,
    /// `None` when no rate matched: the row is kept, with an empty amount, so nothing is lost.
    pub prefix: Option<Prefix>,
    pub billed_s: u32,
    pub amount: Option<Decimal>,
    pub explanation: String,
}

/// Rates every call of a file against one tariff version.
pub fn rate_calls(tariff: &CompiledTariff, calls: &[CallRow], billing_tz: Tz) -> Vec<OutputRow> {
    let mut rows = Vec::with_capacity(calls.len());
    for call in calls {
        let leg = Leg {
            destination: &call.destination,
            answered_at: call.answered_at,
            duration_s: call.duration_s,
        };
        let row = match rating::rate_leg(tariff, &leg, billing_tz) {
            Ok(charge) => OutputRow {
                call_id: call.call_id.clone(),
                prefix: Some(charge.explanation.matched_prefix),
                billed_s: charge.billed_s,
                amount: Some(charge.amount),
                explanation: charge.explanation.render(),
            },
            Err(problem) => OutputRow {
                call_id: call.call_id.clone(),
                prefix: None,
                billed_s: 0,
                amount: None,
                explanation: format!("unrated: {problem}"),
            },
        };
        rows.push(row);
    }
    rows
}

/// How many rows could not be rated.
pub fn unrated_count(rows: &[OutputRow]) -> usize {
    rows.iter().filter(|row| row.amount.is_none()).count()
}

/// Renders the charges CSV, header included.
pub fn render_output(rows: &[OutputRow]) -> String {
    let mut out = String::with_capacity(64 + rows.len() * 160);
    out.push_str(&OUTPUT_COLUMNS.join(","));
    out.push('\n');
    for row in rows {
        push_field(&mut out, &row.call_id);
        out.push(',');
        if let Some(prefix) = row.prefix {
            push_field(&mut out, &prefix.to_string());
        }
        out.push(',');
        push_field(&mut out, &row.billed_s.to_string());
        out.push(',');
        if let Some(amount) = row.amount {
            push_field(&mut out, &amount.to_string());
        }
        out.push(',');
        push_field(&mut out, &row.explanation);
        out.push('\n');
    }
    out
}

/// Writes a field, quoted when it holds a comma, a quote or a line break.
pub fn push_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECK: &str = "prefix,first_interval_s,next_interval_s,price_per_min,next_price_per_min,connection_fee,free_seconds,grace_period_s,offpeak_price_per_min,post_call_surcharge_pct\n\
        44,30,6,0.02,,,,,,\n\
        4930,60,60,0.10,0.05,0.20,0,5,0.04,10\n";

    #[test]
    fn records_handle_quotes_crlf_and_blank_lines() {
        let records = parse_records("a,\"b,c\",\"say \"\"hi\"\"\"\r\n\r\nx,\"multi\nline\",z\n").expect("valid csv");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].fields, vec!["a", "b,c", "say \"hi\""]);
        assert_eq!(records[1].line, 3);
        assert_eq!(records[1].fields, vec!["x", "multi\nline", "z"]);
    }

    #[test]
    fn a_deck_parses_with_empty_columns_meaning_defaults() {
        let version = parse_deck(DECK, &DeckOptions::default()).expect("valid deck");
        assert_eq!(version.rates.len(), 2);
        let uk = &version.rates[0];
        assert_eq!(uk.next_price_per_minute, uk.first_price_per_minute);
        assert!(uk.connection_fee.is_zero() && uk.offpeak.is_none());
        let berlin = &version.rates[1];
        assert_eq!(berlin.grace_period_s, 5);
        assert_eq!(
            berlin.offpeak.map(|p| p.next_price_per_minute),
            Some(Decimal::from_str("0.04").expect("valid"))
        );
    }

    #[test]
    fn malformed_rows_name_their_line_and_column() {
        let bad_price = DECK.replace("0.10,0.05", "0.1O,0.05");
        let problem = parse_deck(&bad_price, &DeckOptions::default()).expect_err("bad price");
        assert_eq!((problem.line, problem.column), (3, 4));
        assert_eq!(
            problem.to_string(),
            "3:4: price_per_min: '0.1O' is not a decimal number"
        );

        let short = format!("{DECK}49,60\n");
        let problem = parse_deck(&short, &DeckOptions::default()).expect_err("short row");
        assert_eq!((problem.line, problem.column), (4, 3));

        let duplicate = format!("{DECK}44,60,60,1,,,,,,\n");
        let problem = parse_deck(&duplicate, &DeckOptions::default()).expect_err("duplicate");
        assert_eq!((problem.line, problem.column), (4, 1));

        let negative = DECK.replace("0.20,0,5", "-0.20,0,5");
        let problem = parse_deck(&negative, &DeckOptions::default()).expect_err("negative");
        assert_eq!((problem.line, problem.column), (3, 6));

        let calls =
            "call_id,destination,answered_at,duration_s\nc1,4930,2024-05-06T10:00:00Z,60\nc2,4930,yesterday,60\n";
        let problem = parse_calls(calls).expect_err("bad time");
        assert_eq!((problem.line, problem.column), (3, 3));
    }

    #[test]
    fn output_quotes_fields_that_need_it() {
        let rows = vec![OutputRow {
            call_id: "a,b".to_string(),
            prefix: Some(Prefix::parse("44").expect("valid")),
            billed_s: 36,
            amount: Some(Decimal::from_str("0.01200").expect("valid")),
            explanation: "say \"why\"".to_string(),
        }];
        assert_eq!(
            render_output(&rows),
            "call_id,prefix,billed_s,amount,explanation\n\"a,b\",44,36,0.01200,\"say \"\"why\"\"\"\n"
        );
    }

    #[test]
    fn calls_rate_end_to_end() {
        let tariff = CompiledTariff::new(parse_deck(DECK, &DeckOptions::default()).expect("deck"));
        let calls = parse_calls(
            "call_id,destination,answered_at,duration_s\nc1,+447700900123,2024-05-06T10:00:00Z,31\nc2,999,2024-05-06T10:00:00Z,31\n",
        )
        .expect("calls");
        let rows = rate_calls(&tariff, &calls, chrono_tz::UTC);
        assert_eq!(rows[0].amount, Some(Decimal::from_str("0.012").expect("valid")));
        assert_eq!(rows[0].billed_s, 36);
        assert_eq!(unrated_count(&rows), 1);
    }
}
