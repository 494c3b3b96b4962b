//! The hash chain, the trail's pure rules (no I/O): what each entry's hash
//! covers, and how a run of entries is checked.
//!
//! An entry's hash is SHA-256 over a domain tag, the previous entry's hash
//! and every recorded field, each length-prefixed so that no two different
//! entries encode alike (moving a byte from one field to the next changes
//! the hash). Timestamps are hashed as microseconds, the precision Postgres
//! keeps, so what is read back hashes as what was written.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The "previous hash" of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Names the hashing scheme: a future scheme gets another tag.
const DOMAIN_TAG: &[u8] = b"commerce-audit-entry-v1";

/// The fields of one entry that its hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFields {
    pub sequence: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub source: String,
    pub subject: String,
    pub actor_id: String,
    pub trace_id: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub payload: Vec<u8>,
}

/// The hash of an entry with `fields` following an entry hashed `previous`.
pub fn entry_hash(previous: &[u8; 32], fields: &EntryFields) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut put = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    put(DOMAIN_TAG);
    put(previous);
    put(&fields.sequence.to_be_bytes());
    put(fields.event_id.as_bytes());
    put(fields.event_type.as_bytes());
    put(fields.source.as_bytes());
    put(fields.subject.as_bytes());
    put(fields.actor_id.as_bytes());
    put(fields.trace_id.as_bytes());
    put(&fields.occurred_at.timestamp_micros().to_be_bytes());
    put(&fields.recorded_at.timestamp_micros().to_be_bytes());
    put(&fields.payload);
    hasher.finalize().into()
}

/// `time` cut to the microsecond, as Postgres stores it.
pub fn to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time)
}

/// An entry as stored: its fields and the two hashes that link it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub fields: EntryFields,
    pub previous_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Why an entry breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub sequence: i64,
    pub problem: String,
}

/// Walks entries in sequence order, remembering the last good link.
#[derive(Debug, Clone)]
pub struct Walker {
    expected_sequence: i64,
    expected_previous: [u8; 32],
    checked: i64,
}

impl Walker {
    /// Starts after the entry `anchor_sequence` whose hash was `anchor_hash`
    /// (0 and [`GENESIS`] for a chain that has lost nothing to retention).
    pub fn after(anchor_sequence: i64, anchor_hash: [u8; 32]) -> Self {
        Self { expected_sequence: anchor_sequence + 1, expected_previous: anchor_hash, checked: 0 }
    }

    /// Entries checked and found good so far.
    pub fn checked(&self) -> i64 {
        self.checked
    }

    /// Checks the next entry: its sequence follows the last one's, it names
    /// the last one's hash, and its own hash matches its fields.
    pub fn step(&mut self, link: &Entry) -> Result<(), Break> {
        let sequence = link.fields.sequence;
        let broken = |problem: String| Break { sequence, problem };
        if sequence != self.expected_sequence {
            return Err(Break {
                sequence: self.expected_sequence,
                problem: format!(
                    "entry {} is missing: the next stored entry is {sequence}",
                    self.expected_sequence
                ),
            });
        }
        if link.previous_hash.as_slice() != self.expected_previous {
            return Err(broken(format!(
                "its previous hash {} is not the hash {} of entry {}",
                hex::encode(&link.previous_hash),
                hex::encode(self.expected_previous),
                sequence - 1
            )));
        }
        let computed = entry_hash(&self.expected_previous, &link.fields);
        if link.hash.as_slice() != computed {
            return Err(broken(format!(
                "its stored hash {} does not match its content (which hashes to {})",
                hex::encode(&link.hash),
                hex::encode(computed)
            )));
        }
        self.expected_sequence = sequence + 1;
        self.expected_previous = computed;
        self.checked += 1;
        Ok(())
    }

    /// Checks that the chain ends at the recorded head: entries removed from
    /// the end leave the head pointing past the last stored entry.
    pub fn finish(&self, head_sequence: i64, head_hash: &[u8]) -> Result<(), Break> {
        let last = self.expected_sequence - 1;
        if last != head_sequence {
            return Err(Break {
                sequence: last + 1,
                problem: format!(
                    "the chain ends at entry {last} but its recorded head is entry {head_sequence}"
                ),
            });
        }
        if head_sequence > 0 && head_hash != self.expected_previous {
            return Err(Break {
                sequence: head_sequence,
                problem: "the recorded head hash is not the last entry's hash".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(sequence: i64) -> EntryFields {
        let time = DateTime::from_timestamp_micros(1_780_000_000_000_000 + sequence).unwrap();
        EntryFields {
            sequence,
            event_id: Uuid::from_u128(u128::try_from(sequence).unwrap()),
            event_type: "commerce.events.v1.OrderPlaced".into(),
            source: "/commerce/order".into(),
            subject: format!("order-{sequence}"),
            actor_id: String::new(),
            trace_id: String::new(),
            occurred_at: time,
            recorded_at: time,
            payload: vec![1, 2, 3],
        }
    }

    fn chain(length: i64) -> Vec<Entry> {
        let mut previous = GENESIS;
        (1..=length)
            .map(|sequence| {
                let fields = fields(sequence);
                let hash = entry_hash(&previous, &fields);
                let link = Entry { fields, previous_hash: previous.to_vec(), hash: hash.to_vec() };
                previous = hash;
                link
            })
            .collect()
    }

    fn walk(links: &[Entry]) -> Result<i64, Break> {
        let mut walker = Walker::after(0, GENESIS);
        for link in links {
            walker.step(link)?;
        }
        let head = links.last().map_or((0, GENESIS.to_vec()), |l| (l.fields.sequence, l.hash.clone()));
        walker.finish(head.0, &head.1)?;
        Ok(walker.checked())
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(walk(&chain(5)), Ok(5));
        assert_eq!(walk(&[]), Ok(0));
    }

    #[test]
    fn a_changed_field_breaks_the_chain_at_that_entry() {
        let mut links = chain(5);
        links[2].fields.actor_id = "someone-else".into();
        let broken = walk(&links).unwrap_err();
        assert_eq!(broken.sequence, 3);
        assert!(broken.problem.contains("does not match its content"), "{}", broken.problem);
    }

    #[test]
    fn a_rehashed_entry_breaks_the_link_of_the_next_one() {
        let mut links = chain(5);
        links[1].fields.payload = vec![9];
        links[1].hash = entry_hash(&links[0].hash.clone().try_into().unwrap(), &links[1].fields).to_vec();
        let broken = walk(&links).unwrap_err();
        assert_eq!(broken.sequence, 3, "{broken:?}");
        assert!(broken.problem.contains("previous hash"), "{}", broken.problem);
    }

    #[test]
    fn a_removed_entry_is_reported_missing() {
        let mut links = chain(5);
        links.remove(3);
        let broken = walk(&links).unwrap_err();
        assert_eq!(broken.sequence, 4);
        assert!(broken.problem.contains("missing"), "{}", broken.problem);
    }

    #[test]
    fn entries_removed_from_the_end_leave_the_head_pointing_past_the_chain() {
        let links = chain(5);
        let mut walker = Walker::after(0, GENESIS);
        for link in &links[..3] {
            walker.step(link).unwrap();
        }
        let broken = walker.finish(5, &links[4].hash).unwrap_err();
        assert_eq!(broken.sequence, 4);
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let mut a = fields(1);
        let mut b = fields(1);
        a.source = "ab".into();
        a.subject = "c".into();
        b.source = "a".into();
        b.subject = "bc".into();
        assert_ne!(entry_hash(&GENESIS, &a), entry_hash(&GENESIS, &b));
    }

    #[test]
    fn timestamps_hash_at_microsecond_precision() {
        let mut a = fields(1);
        let b = a.clone();
        a.occurred_at += chrono::Duration::nanoseconds(300);
        assert_eq!(entry_hash(&GENESIS, &to_micros_fields(a)), entry_hash(&GENESIS, &b));
    }

    fn to_micros_fields(mut fields: EntryFields) -> EntryFields {
        fields.occurred_at = to_micros(fields.occurred_at);
        fields
    }
}
