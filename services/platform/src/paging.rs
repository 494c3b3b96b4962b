//! Offset pages, for lists whose order has no stable key to resume from
//! (sorted by rating, helpfulness or relevance, where keyset tokens would
//! have to carry every sort key). The token is the decimal offset, opaque
//! to clients; the offset is capped, so no request makes the database skip
//! more than [`MAX_OFFSET`] rows.

/// Page size when the request gives none (0).
pub const DEFAULT_PAGE_SIZE: i64 = 20;
/// Largest page.
pub const MAX_PAGE_SIZE: i64 = 100;
/// Deepest offset a token may carry: a list longer than this is narrowed
/// with its filters, not read page by page.
pub const MAX_OFFSET: i64 = 10_000;

/// A page asked for: how many rows, after how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub size: i64,
    pub offset: i64,
}

/// What is wrong with a page request; [`field`](Self::field) names the
/// request field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("must be 0 to 100")]
    Size,
    #[error("is not a token this service gave")]
    Token,
}

impl PageError {
    /// The request field at fault.
    pub fn field(self) -> &'static str {
        match self {
            PageError::Size => "page_size",
            PageError::Token => "page_token",
        }
    }

    /// The problem, for an error naming the field.
    pub fn problem(self) -> &'static str {
        match self {
            PageError::Size => "must be 0 to 100",
            PageError::Token => "is not a token this service gave",
        }
    }
}

impl Page {
    /// The page of a request's `page_size` (0 means the default) and
    /// `page_token` (empty for the first page).
    pub fn parse(page_size: i32, token: &str) -> Result<Page, PageError> {
        let size = match i64::from(page_size) {
            0 => DEFAULT_PAGE_SIZE,
            size @ 1..=MAX_PAGE_SIZE => size,
            _ => return Err(PageError::Size),
        };
        let offset = if token.is_empty() {
            0
        } else {
            match token.parse::<i64>() {
                Ok(offset @ 1..=MAX_OFFSET) => offset,
                _ => return Err(PageError::Token),
            }
        };
        Ok(Page { size, offset })
    }

    /// The token of the next page when rows follow this one (`more`) and
    /// the next offset is within [`MAX_OFFSET`]; empty otherwise.
    pub fn next_token(self, more: bool) -> String {
        let next = self.offset + self.size;
        if more && next <= MAX_OFFSET { next.to_string() } else { String::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_default_bound_and_round_trip_their_token() {
        assert_eq!(Page::parse(0, ""), Ok(Page { size: DEFAULT_PAGE_SIZE, offset: 0 }));
        assert_eq!(Page::parse(100, "40"), Ok(Page { size: 100, offset: 40 }));
        assert_eq!(Page::parse(101, ""), Err(PageError::Size));
        assert_eq!(Page::parse(-1, ""), Err(PageError::Size));
        for bad in ["x", "0", "-5", "10001"] {
            assert_eq!(Page::parse(10, bad), Err(PageError::Token), "{bad}");
        }
        let first = Page { size: 20, offset: 0 };
        assert_eq!(first.next_token(true), "20");
        assert_eq!(Page::parse(20, &first.next_token(true)), Ok(Page { size: 20, offset: 20 }));
        assert_eq!(first.next_token(false), "");
        assert_eq!(Page { size: 20, offset: MAX_OFFSET }.next_token(true), "");
        assert_eq!((PageError::Token.field(), PageError::Size.field()), ("page_token", "page_size"));
    }
}
