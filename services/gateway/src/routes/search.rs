//! `/api/search` and `/api/search/suggest`: the search service's results,
//! for anyone (no sign-in).

use axum::Json;
use axum::extract::State;
use commerce_platform::resilience::idempotent;
use commerce_proto::search::v1 as pb;

use super::{grpc, page_size};
use crate::dto::{SearchQuery, SearchResults, SuggestQuery, Suggestion, Suggestions};
use crate::extract::ApiQuery;
use crate::problem::Problem;
use crate::state::AppState;

/// Products matching the query and filters, with the facets of the matches.
pub async fn search(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<SearchResults>, Problem> {
    let request = pb::SearchRequest {
        query: query.q.unwrap_or_default(),
        category_id: query.category.map(|id| id.to_string()).unwrap_or_default(),
        min_price: query.min_price.unwrap_or(0),
        max_price: query.max_price.unwrap_or(0),
        min_rating: query.min_rating.unwrap_or(0),
        in_stock_only: query.in_stock.unwrap_or(false),
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
    };
    let results = state.search()?.search(idempotent(request)).await.map_err(grpc("search"))?;
    Ok(Json(SearchResults::from(results.into_inner())))
}

/// Product names completing what the shopper typed.
pub async fn suggest(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SuggestQuery>,
) -> Result<Json<Suggestions>, Problem> {
    let request = pb::SuggestRequest { prefix: query.q, limit: query.limit.unwrap_or(0) };
    let found = state.search()?.suggest(idempotent(request)).await.map_err(grpc("search"))?;
    Ok(Json(Suggestions {
        suggestions: found.into_inner().suggestions.into_iter().map(Suggestion::from).collect(),
    }))
}
