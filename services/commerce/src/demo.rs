//! Demo data of a local shop: initial stock for the catalog's demo products
//! (set through the inventory's gRPC API, once per product), and the example
//! requests `commerce local up` prints.

use anyhow::Context as _;
use commerce_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use commerce_proto::inventory::v1::{GetStockRequest, SetStockRequest};
use commerce_topology::Service;

use crate::infra::LocalWiring;

/// Note on the stock adjustments, so the audit trail says where they came from.
const STOCK_NOTE: &str = "commerce local up: demo stock";

/// Ids of the catalog's demo products (fixed, so stock can name them).
#[cfg(feature = "catalog")]
fn demo_product_ids() -> Vec<String> {
    commerce_catalog::seed::DEMO_PRODUCTS.iter().map(|product| product.id.to_string()).collect()
}

#[cfg(not(feature = "catalog"))]
fn demo_product_ids() -> Vec<String> {
    Vec::new()
}

/// How many demo products the catalog seeds.
pub fn demo_product_count() -> usize {
    demo_product_ids().len()
}

/// Gives every demo product that was never stocked (all counters zero)
/// `quantity` available units. Idempotent: a product with any stock history
/// is left alone, so a restarted shop keeps its stock. Returns how many
/// products were stocked by this call.
pub async fn stock_demo_products(
    wiring: &LocalWiring,
    enabled: &[Service],
    quantity: i64,
) -> anyhow::Result<usize> {
    if !enabled.contains(&Service::Catalog) || !enabled.contains(&Service::Inventory) {
        return Ok(0);
    }
    let port = wiring.ports(Service::Inventory).grpc.context("the inventory has no gRPC port")?;
    let mut inventory = InventoryServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .context("cannot connect to the inventory")?;
    let mut stocked = 0;
    for product_id in demo_product_ids() {
        let level = inventory
            .get_stock(GetStockRequest { product_id: product_id.clone() })
            .await
            .with_context(|| format!("cannot read the stock of {product_id}"))?
            .into_inner()
            .stock
            .unwrap_or_default();
        if level.available + level.reserved + level.sold > 0 {
            continue;
        }
        inventory
            .set_stock(SetStockRequest {
                product_id: product_id.clone(),
                available: quantity,
                note: STOCK_NOTE.to_owned(),
            })
            .await
            .with_context(|| format!("cannot set the stock of {product_id}"))?;
        stocked += 1;
    }
    tracing::info!(stocked, quantity, "demo stock set");
    Ok(stocked)
}

/// Requests that walk a customer through the shop with curl and jq:
/// register, log in, list and search products, add to the cart, check out, have the
/// order delivered (signed in as `courier`), review the product and see its
/// rating, see the recommendations and the administrator's dashboard and
/// sales, and follow the order's status through the saga (its Server-Sent
/// Events, from placement to delivery); the administrator's view of the
/// order in the audit trail (signed in as `admin`) comes before it. Both
/// accounts use `password`.
pub fn example_requests(gateway: &str, admin: &str, courier: &str, password: &str) -> String {
    let ids = demo_product_ids();
    let product = ids.first().cloned().unwrap_or_else(|| "<product id from GET /api/products>".to_owned());
    // Bought with the first, so that "also bought" has something to show.
    let companion = ids.get(1).cloned().unwrap_or_else(|| "<another product id>".to_owned());
    format!(
        r#"
Try it (bash, with curl and jq):

  GW={gateway}
  EMAIL="ada+$(date +%s)@example.com"
  curl -s -X POST $GW/api/auth/register -H 'content-type: application/json' \
    -d '{{"email":"'$EMAIL'","password":"correct-horse","display_name":"Ada"}}' | jq .user
  TOKEN=$(curl -s -X POST $GW/api/auth/login -H 'content-type: application/json' \
    -d '{{"email":"'$EMAIL'","password":"correct-horse"}}' | jq -r .tokens.access_token)
  curl -s "$GW/api/products?page_size=3" | jq '.products[] | {{id, name, price}}'
  # Search forgives the typo, highlights the match and counts the facets; autocomplete completes a word.
  curl -s "$GW/api/search?q=keybord" | jq -c '{{corrected_query, total_size, hits: [.hits[] | {{name_highlight, in_stock}}], price_bands: .facets.price_bands}}'
  curl -s "$GW/api/search/suggest?q=wire" | jq -c '[.suggestions[].name]'
  curl -s -X POST $GW/api/cart/items -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{{"product_id":"{product}","quantity":2}}' | jq .subtotal
  curl -s -X POST $GW/api/cart/items -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{{"product_id":"{companion}","quantity":1}}' | jq .subtotal
  # The address book's default is where a checkout without an address ships.
  curl -s -X POST $GW/api/users/me/addresses -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{{"label":"Home","address":{{"recipient_name":"Ada","line1":"1 Main St","city":"Berlin","postal_code":"10115","country_code":"DE"}}}}' \
    | jq -c '{{id, is_default}}'
  ORDER=$(curl -s -X POST $GW/api/cart/checkout -H "authorization: Bearer $TOKEN" \
    -H "idempotency-key: $(date +%s%N)" -H 'content-type: application/json' \
    -d '{{"payment_method_token":"tok_visa"}}' | jq -r .id)
  # As the shop's administrator: the order's events in the audit trail, and the trail's check.
  ADMIN=$(curl -s -X POST $GW/api/auth/login -H 'content-type: application/json' \
    -d '{{"email":"{admin}","password":"{password}"}}' | jq -r .tokens.access_token)
  sleep 2; curl -s "$GW/api/admin/audit?subject=$ORDER" -H "authorization: Bearer $ADMIN" \
    | jq -c '.entries[] | {{sequence, event_type, source}}'
  curl -s $GW/api/admin/audit/verify -H "authorization: Bearer $ADMIN" | jq -c '{{intact, entries_checked}}'
  # The courier delivers the order; only then may the buyer review the product, and its rating shows.
  COURIER=$(curl -s -X POST $GW/api/auth/login -H 'content-type: application/json' \
    -d '{{"email":"{courier}","password":"{password}"}}' | jq -r .tokens.access_token)
  SHIPMENT=$(curl -s "$GW/api/shipments?order_id=$ORDER" -H "authorization: Bearer $TOKEN" | jq -r '.shipments[0].id')
  for STATUS in assigned picked_up in_transit delivered; do
    curl -s -X POST $GW/api/shipments/$SHIPMENT/status -H "authorization: Bearer $COURIER" \
      -H 'content-type: application/json' -d '{{"status":"'$STATUS'"}}' | jq -r .status; done
  sleep 1; curl -s -X POST $GW/api/products/{product}/reviews -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d '{{"rating":5,"title":"Does what it says"}}' | jq -c '{{id, rating, status}}'
  sleep 1; curl -s $GW/api/products/{product} -H "authorization: Bearer $TOKEN" | jq -c .rating
  # Recommendations: what the product's buyers also bought (or its category's best sellers), and for the buyer
  # (the gateway sends signed-in views each second).
  curl -s $GW/api/products/{product}/recommendations | jq -c '{{also_bought: [.also_bought[].name], popular_in_category: [.popular_in_category[].name]}}'
  sleep 1; curl -s $GW/api/recommendations/me -H "authorization: Bearer $TOKEN" | jq -c '{{recently_viewed: [.recently_viewed[].name], recommended: [.recommended[].name]}}'
  curl -s "$GW/api/products/{product}/reviews?sort=most_helpful" | jq -c '.summary'
  # The administrator's dashboard and sales, from the events (also as CSV: /api/admin/analytics/sales.csv).
  curl -s $GW/api/admin/dashboard -H "authorization: Bearer $ADMIN" \
    | jq -c '{{orders_today, revenue_today, low_stock: [.low_stock[].name], stuck: (.stuck_orders | length)}}'
  curl -s "$GW/api/admin/analytics/sales?group_by=product" -H "authorization: Bearer $ADMIN" \
    | jq -c '[.rows[] | {{product: .label, units, revenue_minor}}]'
  # The order's status changes (Server-Sent Events; a reconnect sends Last-Event-ID: <last id>):
  # from placement to delivery, where the stream ends.
  curl -sN $GW/api/orders/$ORDER/events -H "authorization: Bearer $TOKEN"
"#
    )
}
