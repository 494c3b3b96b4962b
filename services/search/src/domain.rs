//! The rules of a search, pure: how a query splits into words, how a page
//! is asked for, and the price bands of the facet.

use commerce_platform::paging::Page;

/// Longest query, in characters.
pub const MAX_QUERY: usize = 200;
/// Longest autocomplete prefix, in characters.
pub const MAX_PREFIX: usize = 100;
/// Most words of a query that are searched; the rest are ignored.
pub const MAX_WORDS: usize = 10;
/// Longest word kept; longer runs of letters are not words anyone types.
pub const MAX_WORD: usize = 40;
/// Suggestions when none is asked for.
pub const DEFAULT_SUGGESTIONS: i64 = 8;
/// Most suggestions.
pub const MAX_SUGGESTIONS: i64 = 20;
/// Lower bounds of the price bands, in minor units; each band ends where the
/// next begins, the last is open.
pub const PRICE_BANDS: [i64; 5] = [0, 1_000, 2_500, 5_000, 10_000];

/// A field that breaks a rule; the gRPC answer names both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub problem: &'static str,
}

fn invalid<T>(field: &'static str, problem: &'static str) -> Result<T, Invalid> {
    Err(Invalid { field, problem })
}

/// The words of a query: runs of letters and digits, lower case, at most
/// [`MAX_WORDS`] of at most [`MAX_WORD`] characters. Everything else
/// (punctuation, operators, quotes) separates words, so no text a shopper
/// types reaches a `tsquery` parser as syntax.
pub fn words(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| word.to_lowercase().chars().take(MAX_WORD).collect())
        .take(MAX_WORDS)
        .collect()
}

/// Checks a query's length.
pub fn check_query(field: &'static str, query: &str, max: usize) -> Result<(), Invalid> {
    if query.chars().count() > max {
        return invalid(field, "is too long");
    }
    Ok(())
}

/// The `to_tsquery('simple', ..)` text of an autocomplete: every word
/// required, the last one as a prefix. The words come from [`words`], so
/// they hold letters and digits only.
pub fn prefix_query(words: &[String]) -> String {
    let mut terms: Vec<String> = words.to_vec();
    if let Some(last) = terms.last_mut() {
        last.push_str(":*");
    }
    terms.join(" & ")
}

/// The band of a price, as its facet value.
pub fn price_band(units: i64) -> String {
    let index = PRICE_BANDS.iter().rposition(|lower| units >= *lower).unwrap_or(0);
    match PRICE_BANDS.get(index + 1) {
        Some(upper) => format!("{}-{upper}", PRICE_BANDS[index]),
        None => format!("{}+", PRICE_BANDS[index]),
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
    fn words_are_lower_case_runs_of_letters_and_digits_and_nothing_else() {
        assert_eq!(words("  Brass-LAMP & 'shade' | 60W!"), ["brass", "lamp", "shade", "60w"]);
        assert_eq!(words("Größe ÉTÉ"), ["größe", "été"]);
        assert_eq!(words("!:*()&|<->"), Vec::<String>::new());
        assert_eq!(words(&"w ".repeat(50)).len(), MAX_WORDS);
        assert_eq!(words(&"x".repeat(100))[0].len(), MAX_WORD);
    }

    #[test]
    fn an_autocomplete_requires_every_word_and_completes_the_last() {
        assert_eq!(prefix_query(&words("brass la")), "brass & la:*");
        assert_eq!(prefix_query(&words("k")), "k:*");
        assert_eq!(prefix_query(&[]), "");
    }

    #[test]
    fn prices_fall_in_half_open_bands() {
        assert_eq!(price_band(0), "0-1000");
        assert_eq!(price_band(999), "0-1000");
        assert_eq!(price_band(1_000), "1000-2500");
        assert_eq!(price_band(9_999), "5000-10000");
        assert_eq!(price_band(10_000), "10000+");
        assert_eq!(price_band(-5), "0-1000");
    }

    #[test]
    fn a_bad_page_or_query_names_its_field() {
        assert_eq!(page(0, ""), Ok(Page { size: 20, offset: 0 }));
        assert_eq!(page(101, "").unwrap_err().field, "page_size");
        assert_eq!(page(10, "x").unwrap_err().field, "page_token");
        assert_eq!(check_query("query", &"a".repeat(MAX_QUERY + 1), MAX_QUERY).unwrap_err().field, "query");
    }
}
