//! What the load needs to know of the shop before it starts: the products
//! users view and buy, read once through the public catalog API (so the load
//! runs against any shop, seeded with demo products or not), and search
//! terms taken from their names. Also the paths of catalog requests, with
//! their query strings encoded.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::Error;

/// Most products read before the run: enough for a varied mix, few enough
/// that a large catalog costs a handful of requests.
const MAX_PRODUCTS: usize = 1000;
/// Page size of that read: the largest the API serves.
const READ_PAGE_SIZE: &str = "100";
/// How long one request of that read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest word of a product name used as a search term: shorter ones
/// ("of", "and") match half the catalog.
const MIN_TERM_CHARS: usize = 4;

/// A product as the catalog API lists it (the fields the load uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
}

/// One page of `GET /api/products`.
#[derive(Debug, Deserialize)]
pub struct ProductPage {
    pub products: Vec<Product>,
    /// Empty on the last page.
    #[serde(default)]
    pub next_page_token: String,
}

/// The products and search terms of the shop under load.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub products: Vec<Product>,
    pub search_terms: Vec<String>,
}

impl Catalog {
    /// Reads the active products of the shop at `host`, page by page, up to
    /// [`MAX_PRODUCTS`]. An empty catalog is an error: there would be nothing
    /// to view or buy.
    pub async fn read(host: &Url, accept_invalid_certs: bool) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .timeout(READ_TIMEOUT)
            .danger_accept_invalid_certs(accept_invalid_certs)
            .build()
            .map_err(Error::BuildClient)?;
        let mut products = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("page_size", READ_PAGE_SIZE)];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let url = api_url(host, &products_path(&query))?;
            let read = async {
                client.get(url.clone()).send().await?.error_for_status()?.json::<ProductPage>().await
            };
            let page = read.await.map_err(|source| Error::ReadCatalog { url: url.to_string(), source })?;
            products.extend(page.products);
            token = page.next_page_token;
            if token.is_empty() || products.len() >= MAX_PRODUCTS {
                break;
            }
        }
        if products.is_empty() {
            return Err(Error::FindProducts { host: host.to_string() });
        }
        let search_terms = search_terms(products.iter().map(|product| product.name.as_str()));
        Ok(Self { products, search_terms })
    }
}

/// `path` (which starts with `/`) on the gateway at `host`.
pub fn api_url(host: &Url, path: &str) -> Result<Url, Error> {
    host.join(path).map_err(|source| Error::ParseHost { host: host.to_string(), source })
}

/// `/api/products` with `query` encoded (page tokens are opaque and may
/// hold `+`, `/` or `=`; search terms may hold anything).
pub fn products_path(query: &[(&str, &str)]) -> String {
    if query.is_empty() {
        return "/api/products".to_owned();
    }
    let encoded = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
    format!("/api/products?{encoded}")
}

/// Distinct lower-case words of at least [`MIN_TERM_CHARS`] letters from
/// the product names, sorted: each finds at least one product.
pub fn search_terms<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let words: BTreeSet<String> = names
        .into_iter()
        .flat_map(|name| name.split(|c: char| !c.is_alphabetic()))
        .filter(|word| word.chars().count() >= MIN_TERM_CHARS)
        .map(str::to_lowercase)
        .collect();
    words.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_are_the_distinct_longer_words_of_the_names() {
        let terms = search_terms(["Mechanical Keyboard", "USB-C cable, 2 m", "Keyboard wrist rest"]);
        assert_eq!(terms, ["cable", "keyboard", "mechanical", "rest", "wrist"]);
    }

    #[test]
    fn product_paths_encode_their_query() {
        assert_eq!(products_path(&[]), "/api/products");
        assert_eq!(
            products_path(&[("page_size", "5"), ("page_token", "a+b/c==")]),
            "/api/products?page_size=5&page_token=a%2Bb%2Fc%3D%3D"
        );
        assert_eq!(products_path(&[("q", "wrist rest&more")]), "/api/products?q=wrist+rest%26more");
    }

    #[test]
    fn api_paths_join_the_host_with_or_without_a_trailing_slash() {
        for host in ["http://127.0.0.1:8080", "http://127.0.0.1:8080/"] {
            let host = Url::parse(host).expect("a URL");
            let url = api_url(&host, "/api/products?page_size=100").expect("joins");
            assert_eq!(url.as_str(), "http://127.0.0.1:8080/api/products?page_size=100");
        }
    }

    #[test]
    fn a_product_page_reads_the_apis_json() {
        let page: ProductPage = serde_json::from_str(
            r#"{"products": [{"id": "p1", "name": "Lamp", "sku": "L-1", "active": true}],
                "next_page_token": "t", "total_size": 7}"#,
        )
        .expect("parses");
        assert_eq!(page.products, [Product { id: "p1".to_owned(), name: "Lamp".to_owned() }]);
        assert_eq!(page.next_page_token, "t");
    }
}
