//! The rules of reviews, pure: what a review may hold, how a list is
//! ordered and paged.

use commerce_proto::reviews::v1 as pb;

/// Longest headline, in characters.
pub const MAX_TITLE: usize = 120;
/// Longest text, in characters.
pub const MAX_BODY: usize = 5_000;
/// Longest report reason or moderation note, in characters.
pub const MAX_REASON: usize = 500;
/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: i64 = 20;
/// Largest page.
pub const MAX_PAGE_SIZE: i64 = 100;
/// Deepest offset a page token may carry: a product with more reviews than
/// this is read through its filters and sorts, not page by page.
pub const MAX_OFFSET: i64 = 10_000;

/// A field that breaks a rule; the gRPC answer names both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub problem: &'static str,
}

fn invalid<T>(field: &'static str, problem: &'static str) -> Result<T, Invalid> {
    Err(Invalid { field, problem })
}

/// Stars must be 1 to 5.
pub fn check_rating(rating: i32) -> Result<i16, Invalid> {
    match i16::try_from(rating) {
        Ok(stars @ 1..=5) => Ok(stars),
        _ => invalid("rating", "must be 1 to 5 stars"),
    }
}

/// A headline of at most [`MAX_TITLE`] characters and a text of at most
/// [`MAX_BODY`]; both may be empty, the stars say enough.
pub fn check_text(title: &str, body: &str) -> Result<(), Invalid> {
    if title.chars().count() > MAX_TITLE {
        return invalid("title", "must be at most 120 characters");
    }
    if body.chars().count() > MAX_BODY {
        return invalid("body", "must be at most 5000 characters");
    }
    Ok(())
}

/// A report needs a reason of 1 to [`MAX_REASON`] characters.
pub fn check_reason(reason: &str) -> Result<(), Invalid> {
    if reason.trim().is_empty() {
        return invalid("reason", "must not be empty");
    }
    if reason.chars().count() > MAX_REASON {
        return invalid("reason", "must be at most 500 characters");
    }
    Ok(())
}

/// A moderation note may be empty, up to [`MAX_REASON`] characters.
pub fn check_note(note: &str) -> Result<(), Invalid> {
    if note.chars().count() > MAX_REASON {
        return invalid("note", "must be at most 500 characters");
    }
    Ok(())
}

/// Where a review stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Published,
    Flagged,
    Removed,
}

impl Status {
    pub fn parse(stored: &str) -> Status {
        match stored {
            "flagged" => Status::Flagged,
            "removed" => Status::Removed,
            _ => Status::Published,
        }
    }

    pub fn to_proto(self) -> pb::ReviewStatus {
        match self {
            Status::Published => pb::ReviewStatus::Published,
            Status::Flagged => pb::ReviewStatus::Flagged,
            Status::Removed => pb::ReviewStatus::Removed,
        }
    }
}

/// The `ORDER BY` of a sort: a fixed text per variant, never user input.
pub fn order_by(sort: pb::ReviewSort) -> &'static str {
    match sort {
        pb::ReviewSort::Unspecified | pb::ReviewSort::Newest => "created_at DESC, id DESC",
        pb::ReviewSort::Oldest => "created_at ASC, id ASC",
        pb::ReviewSort::HighestRating => "rating DESC, created_at DESC, id DESC",
        pb::ReviewSort::LowestRating => "rating ASC, created_at DESC, id DESC",
        pb::ReviewSort::MostHelpful => "helpful_count DESC, created_at DESC, id DESC",
    }
}

/// A page: its size (0 means the default) and the offset its token carries
/// (a decimal offset; the token is opaque to clients).
pub fn page(page_size: i32, token: &str) -> Result<(i64, i64), Invalid> {
    let size = match i64::from(page_size) {
        0 => DEFAULT_PAGE_SIZE,
        size @ 1..=MAX_PAGE_SIZE => size,
        _ => return invalid("page_size", "must be 0 to 100"),
    };
    let offset = if token.is_empty() {
        0
    } else {
        match token.parse::<i64>() {
            Ok(offset @ 1..=MAX_OFFSET) => offset,
            _ => return invalid("page_token", "is not a token this service gave"),
        }
    };
    Ok((size, offset))
}

/// The token of the page after `offset`, if a row beyond this page exists
/// and the next offset is within [`MAX_OFFSET`].
pub fn next_token(offset: i64, size: i64, more: bool) -> String {
    let next = offset + size;
    if more && next <= MAX_OFFSET { next.to_string() } else { String::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_are_one_to_five() {
        assert_eq!(check_rating(1), Ok(1));
        assert_eq!(check_rating(5), Ok(5));
        for bad in [0, 6, -1, i32::MAX] {
            assert_eq!(check_rating(bad).unwrap_err().field, "rating", "{bad}");
        }
    }

    #[test]
    fn texts_are_bounded_in_characters_not_bytes() {
        assert!(check_text(&"é".repeat(MAX_TITLE), &"ß".repeat(MAX_BODY)).is_ok());
        assert_eq!(check_text(&"a".repeat(MAX_TITLE + 1), "").unwrap_err().field, "title");
        assert_eq!(check_text("", &"a".repeat(MAX_BODY + 1)).unwrap_err().field, "body");
        assert_eq!(check_reason("  ").unwrap_err().field, "reason");
        assert!(check_reason("spam").is_ok());
        assert_eq!(check_note(&"a".repeat(MAX_REASON + 1)).unwrap_err().field, "note");
    }

    #[test]
    fn pages_default_bound_and_round_trip_their_token() {
        assert_eq!(page(0, ""), Ok((DEFAULT_PAGE_SIZE, 0)));
        assert_eq!(page(100, "40"), Ok((100, 40)));
        assert_eq!(page(101, "").unwrap_err().field, "page_size");
        assert_eq!(page(-1, "").unwrap_err().field, "page_size");
        for bad in ["x", "0", "-5", "10001"] {
            assert_eq!(page(10, bad).unwrap_err().field, "page_token", "{bad}");
        }
        assert_eq!(next_token(0, 20, true), "20");
        assert_eq!(page(20, &next_token(0, 20, true)), Ok((20, 20)));
        assert_eq!(next_token(0, 20, false), "");
        assert_eq!(next_token(MAX_OFFSET, 20, true), "");
    }

    #[test]
    fn every_sort_orders_by_a_unique_key() {
        for sort in [
            pb::ReviewSort::Unspecified,
            pb::ReviewSort::Newest,
            pb::ReviewSort::Oldest,
            pb::ReviewSort::HighestRating,
            pb::ReviewSort::LowestRating,
            pb::ReviewSort::MostHelpful,
        ] {
            assert!(order_by(sort).ends_with("id DESC") || order_by(sort).ends_with("id ASC"), "{sort:?}");
        }
    }
}
