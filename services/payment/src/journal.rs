//! The mock provider's journal: every change of its ledger as one JSON line,
//! appended before the provider answers (`--mock-ledger-file`).
//!
//! A real provider keeps its ledger whatever happens to the payment service.
//! The mock's ledger lived in the payment process's memory, so a SIGKILL
//! wiped the provider's record of which keys had taken money: a repeat after
//! a crash would have charged again unseen, and a test could not tell what
//! money had moved. With a journal, a restarted mock replays it and answers
//! repeats as before, and tests read the same file ([`read`],
//! [`money_by_charge_key`]) to check the money against the shop's own
//! records.
//!
//! One line is written with one `write` on a file opened for appending, so a
//! killed process leaves whole lines; a line cut by a machine crash is
//! dropped when the journal is opened again (it was never answered). One
//! payment process per file: two processes appending to one journal would
//! not see each other's keys.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::{ChargeOutcome, VoidOutcome};

/// One change of the mock's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JournalEntry {
    /// The first answer to a charge key (later repeats return it and are not
    /// written again).
    Charge { key: String, amount: i64, currency: String, outcome: ChargeOutcome },
    /// The first void of a charge key.
    Void { key: String, outcome: VoidOutcome },
    /// The first refund under a refund key.
    Refund { key: String, charge_reference: String, amount: i64, reference: String },
}

/// An open journal, appended to line by line.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) the journal at `path` and returns its entries. A
    /// last line without its newline (a write cut by a machine crash) is cut
    /// off; any other line that does not parse is an error naming it.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<JournalEntry>)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let whole = text.rfind('\n').map_or(0, |end| end + 1);
        if whole < text.len() {
            tracing::warn!(path = %path.display(), "mock ledger: dropping a cut last line");
            file.set_len(whole as u64)?;
            file.seek(io::SeekFrom::End(0))?;
        }
        let entries = parse(path, &text[..whole])?;
        Ok((Self { path: path.to_path_buf(), file }, entries))
    }

    /// Appends `entry` as one line in one write.
    pub fn append(&mut self, entry: &JournalEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|error| {
            io::Error::new(error.kind(), format!("cannot append to {}: {error}", self.path.display()))
        })
    }
}

/// The entries of the journal at `path` (tests read it from outside the
/// payment process; a cut last line is ignored).
pub fn read(path: &Path) -> io::Result<Vec<JournalEntry>> {
    let text = std::fs::read_to_string(path)?;
    let whole = text.rfind('\n').map_or(0, |end| end + 1);
    parse(path, &text[..whole])
}

fn parse(path: &Path, text: &str) -> io::Result<Vec<JournalEntry>> {
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|error| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} line {}: {error}", path.display(), n + 1),
                )
            })
        })
        .collect()
}

/// What the provider did with one charge key's money.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMoney {
    /// Charge entries that captured (more than one is a double charge).
    pub captures: u32,
    /// Minor units captured.
    pub captured: i64,
    /// Minor units given back by a void that reversed the capture.
    pub reversed: i64,
    /// Minor units refunded against the capture.
    pub refunded: i64,
    /// Refunds made against the capture.
    pub refunds: u32,
}

impl KeyMoney {
    /// What the provider still holds for the key.
    pub fn net(&self) -> i64 {
        self.captured - self.reversed - self.refunded
    }
}

/// The money per charge key (the order id) that `entries` record.
pub fn money_by_charge_key(entries: &[JournalEntry]) -> HashMap<String, KeyMoney> {
    let mut money: HashMap<String, KeyMoney> = HashMap::new();
    let mut key_of_reference: HashMap<&str, &str> = HashMap::new();
    for entry in entries {
        match entry {
            JournalEntry::Charge { key, amount, outcome: ChargeOutcome::Captured { reference }, .. } => {
                let key_money = money.entry(key.clone()).or_default();
                key_money.captures += 1;
                key_money.captured += amount;
                key_of_reference.insert(reference, key);
            }
            JournalEntry::Charge { key, .. } => {
                money.entry(key.clone()).or_default();
            }
            JournalEntry::Void { key, outcome: VoidOutcome::Reversed { .. } } => {
                let key_money = money.entry(key.clone()).or_default();
                key_money.reversed = key_money.captured;
            }
            JournalEntry::Void { .. } => {}
            JournalEntry::Refund { charge_reference, amount, .. } => {
                let key =
                    key_of_reference.get(charge_reference.as_str()).copied().unwrap_or(charge_reference);
                let key_money = money.entry(key.to_owned()).or_default();
                key_money.refunded += amount;
                key_money.refunds += 1;
            }
        }
    }
    money
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("commerce-journal-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("ledger.jsonl");
        let _ = std::fs::remove_file(&path);
        path
    }

    fn captured(key: &str, amount: i64) -> JournalEntry {
        JournalEntry::Charge {
            key: key.to_owned(),
            amount,
            currency: "EUR".to_owned(),
            outcome: ChargeOutcome::Captured { reference: format!("mock_ch_{key}") },
        }
    }

    #[test]
    fn entries_appended_are_read_back_and_a_cut_last_line_is_dropped() {
        let path = scratch("cut");
        let (mut journal, entries) = Journal::open(&path).expect("opened");
        assert!(entries.is_empty());
        journal.append(&captured("o-1", 500)).expect("appended");
        drop(journal);
        // A crash in the middle of the next write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(br#"{"op":"charge","key":"o-2""#))
            .expect("cut line written");
        assert_eq!(read(&path).expect("read"), vec![captured("o-1", 500)], "the cut line is ignored");
        let (mut journal, entries) = Journal::open(&path).expect("reopened");
        assert_eq!(entries, vec![captured("o-1", 500)]);
        journal.append(&captured("o-3", 700)).expect("appended after the cut");
        assert_eq!(read(&path).expect("read"), vec![captured("o-1", 500), captured("o-3", 700)]);
    }

    #[test]
    fn a_line_that_does_not_parse_is_an_error_naming_the_file_and_line() {
        let path = scratch("bad");
        std::fs::write(&path, "{\"op\":\"unknown\"}\n").expect("written");
        let error = Journal::open(&path).expect_err("refused");
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[test]
    fn money_per_key_nets_captures_against_voids_and_refunds() {
        let entries = vec![
            captured("kept", 500),
            captured("voided", 300),
            JournalEntry::Void {
                key: "voided".to_owned(),
                outcome: VoidOutcome::Reversed { reference: "mock_void_voided".to_owned() },
            },
            captured("refunded", 900),
            JournalEntry::Refund {
                key: "refund-1".to_owned(),
                charge_reference: "mock_ch_refunded".to_owned(),
                amount: 900,
                reference: "mock_re_refund-1".to_owned(),
            },
            JournalEntry::Charge {
                key: "declined".to_owned(),
                amount: 100,
                currency: "EUR".to_owned(),
                outcome: ChargeOutcome::Declined { reason: "card declined".to_owned() },
            },
            captured("twice", 200),
            captured("twice", 200),
        ];
        let money = money_by_charge_key(&entries);
        assert_eq!(money["kept"].net(), 500);
        assert_eq!(money["voided"].net(), 0);
        assert_eq!((money["refunded"].net(), money["refunded"].refunds), (0, 1));
        assert_eq!(money["declined"], KeyMoney::default());
        assert_eq!((money["twice"].captures, money["twice"].net()), (2, 400));
    }
}
