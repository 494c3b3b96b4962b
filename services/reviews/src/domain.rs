//! The rules of reviews, pure: what a review may hold, how a list is
//! ordered and paged.

use commerce_platform::paging::Page;
use commerce_proto::reviews::v1 as pb;

/// Longest headline, in characters.
pub const MAX_TITLE: usize = 120;
/// Longest text, in characters.
pub const MAX_BODY: usize = 5_000;
/// Longest report reason or moderation note, in characters.
pub const MAX_REASON: usize = 500;

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

/// The page a request asks for (see [`commerce_platform::paging`]).
pub fn page(page_size: i32, token: &str) -> Result<Page, Invalid> {
    Page::parse(page_size, token).map_err(|error| Invalid { field: error.field(), problem: error.problem() })
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
    fn a_bad_page_names_its_field() {
        assert_eq!(page(0, ""), Ok(Page { size: 20, offset: 0 }));
        assert_eq!(page(101, "").unwrap_err().field, "page_size");
        assert_eq!(
            page(10, "x").unwrap_err(),
            Invalid { field: "page_token", problem: "is not a token this service gave" }
        );
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
