//! The `SearchService` gRPC server: proto <-> the index's queries, and the
//! one `From<Error> for Status` mapping.

use commerce_proto::common::v1::Money;
use commerce_proto::search::v1 as pb;
use commerce_proto::search::v1::search_service_server::SearchService;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, PRICE_BANDS};
use crate::store::{self, FacetRow, Filters};

/// The gRPC face of the search service.
#[derive(Debug, Clone)]
pub struct SearchGrpc {
    pool: PgPool,
}

impl SearchGrpc {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn checked<T>(result: Result<T, domain::Invalid>) -> Result<T, Error> {
    result.map_err(|invalid| Error::InvalidRequest { field: invalid.field, problem: invalid.problem })
}

fn filters(request: &pb::SearchRequest) -> Result<Filters, Error> {
    let category_id = match request.category_id.as_str() {
        "" => None,
        raw => Some(
            Uuid::parse_str(raw)
                .map_err(|_| Error::InvalidRequest { field: "category_id", problem: "is not a UUID" })?,
        ),
    };
    if request.min_price < 0 || request.max_price < 0 {
        return Err(Error::InvalidRequest { field: "min_price", problem: "prices must not be negative" });
    }
    if !(0..=4).contains(&request.min_rating) {
        return Err(Error::InvalidRequest { field: "min_rating", problem: "must be 0 to 4" });
    }
    Ok(Filters {
        category_id,
        min_price: (request.min_price > 0).then_some(request.min_price),
        max_price: (request.max_price > 0).then_some(request.max_price),
        min_rating: request.min_rating,
        in_stock_only: request.in_stock_only,
    })
}

fn facets(rows: Vec<FacetRow>) -> pb::Facets {
    let mut facets = pb::Facets::default();
    for row in rows {
        let (list, value) = match row.facet.as_str() {
            "category" => (&mut facets.categories, row.value),
            "price" => {
                let band = row.value.parse::<usize>().ok().and_then(|index| PRICE_BANDS.get(index));
                (&mut facets.price_bands, domain::price_band(band.copied().unwrap_or(0)))
            }
            "rating" => (&mut facets.ratings, row.value),
            _ => (&mut facets.in_stock, row.value),
        };
        list.push(pb::FacetCount { value, count: row.count });
    }
    // The most common category first; bands, ratings and stock stay in
    // their natural order.
    facets.categories.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    facets
}

#[tonic::async_trait]
impl SearchService for SearchGrpc {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let request = request.into_inner();
        checked(domain::check_query("query", &request.query, domain::MAX_QUERY))?;
        let filters = filters(&request)?;
        let page = checked(domain::page(request.page_size, &request.page_token))?;
        let words = domain::words(&request.query);
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let corrected = store::correct(&mut conn, &words).await?.join(" ");
        let has_text = store::has_terms(&mut conn, &corrected).await?;
        let hits = store::hits(&mut conn, &corrected, has_text, &filters, page.size, page.offset).await?;
        let total = match hits.first() {
            Some(hit) => hit.total,
            None => store::count(&mut conn, &corrected, has_text, &filters).await?,
        };
        let facets = facets(store::facets(&mut conn, &corrected, has_text, &filters).await?);
        let corrected_query = if corrected == words.join(" ") { request.query.clone() } else { corrected };
        Ok(Response::new(pb::SearchResponse {
            hits: hits
                .into_iter()
                .map(|hit| pb::SearchHit {
                    product_id: hit.product_id.to_string(),
                    sku: hit.sku,
                    name: hit.name,
                    category_id: hit.category_id.to_string(),
                    price: Some(Money { currency_code: hit.currency, units: hit.price_units }),
                    in_stock: hit.available > 0,
                    review_count: hit.review_count,
                    stars_total: hit.stars_total,
                    name_highlight: hit.name_highlight,
                    description_highlight: hit.description_highlight,
                    score: f64::from(hit.score),
                })
                .collect(),
            total_size: total,
            next_page_token: page.next_token(page.offset + page.size < total),
            facets: Some(facets),
            corrected_query,
        }))
    }

    async fn suggest(
        &self,
        request: Request<pb::SuggestRequest>,
    ) -> Result<Response<pb::SuggestResponse>, Status> {
        let request = request.into_inner();
        checked(domain::check_query("prefix", &request.prefix, domain::MAX_PREFIX))?;
        let limit = match i64::from(request.limit) {
            0 => domain::DEFAULT_SUGGESTIONS,
            limit @ 1..=domain::MAX_SUGGESTIONS => limit,
            _ => return Err(Error::InvalidRequest { field: "limit", problem: "must be 0 to 20" }.into()),
        };
        let mut words = domain::words(&request.prefix);
        if words.is_empty() {
            return Ok(Response::new(pb::SuggestResponse::default()));
        }
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        // Every word but the last is complete: a misspelt one is corrected;
        // the last is a prefix, left as typed.
        if words.len() > 1 {
            let last = words.pop().unwrap_or_default();
            words = store::correct(&mut conn, &words).await?;
            words.push(last);
        }
        let completions = store::suggest(&mut conn, &domain::prefix_query(&words), limit).await?;
        Ok(Response::new(pb::SuggestResponse {
            suggestions: completions
                .into_iter()
                .map(|completion| pb::Suggestion {
                    product_id: completion.product_id.to_string(),
                    name: completion.name,
                    highlight: completion.highlight,
                })
                .collect(),
        }))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "search request failed");
                Status::internal("internal error")
            }
        }
    }
}
