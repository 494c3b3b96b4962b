//! Carts in Redis: one hash per user (`<prefix>:cart:{user}`, the prefix from `--redis-key-prefix`), a field per
//! product (`p:<product_id>` = `quantity:added_at_ms`) plus `updated` (ms),
//! forgotten after the configured TTL (24 h) unless written again: every
//! write refreshes the expiry.
//!
//! Each write is one Lua script, so a read-modify-write (merging quantities,
//! enforcing the per-line maximum, removing exactly the lines an order was
//! placed for) is atomic however many cart replicas serve one user.
//!
//! Checkout results are kept next to the carts
//! (`<prefix>:cart-checkout:{user}:<idempotency key>`, the encoded order) for
//! the same TTL, so that a retried checkout whose cart was already emptied
//! returns the order it placed.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::Error;
use crate::domain::{self, CartLine, RuleError};

/// Prefix of a line's field in the cart hash.
const LINE_FIELD_PREFIX: &str = "p:";
/// The field holding the time of the last change (ms since the epoch).
const UPDATED_FIELD: &str = "updated";

/// Adds units to a line (creating it), atomically checking the limits.
/// KEYS[1] cart; ARGV: field, added, max per line, now ms, ttl ms, max lines.
/// Returns {0, new quantity} | {1, would-be quantity} (line maximum) |
/// {2, 0} (too many lines).
const ADD_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
local quantity = 0
local added_at = ARGV[4]
if current then
  local sep = string.find(current, ':', 1, true)
  quantity = tonumber(string.sub(current, 1, sep - 1))
  added_at = string.sub(current, sep + 1)
else
  local lines = redis.call('HLEN', KEYS[1])
  if redis.call('HEXISTS', KEYS[1], 'updated') == 1 then lines = lines - 1 end
  if lines >= tonumber(ARGV[6]) then return {2, 0} end
end
local total = quantity + tonumber(ARGV[2])
if total > tonumber(ARGV[3]) then return {1, total} end
redis.call('HSET', KEYS[1], ARGV[1], total .. ':' .. added_at, 'updated', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {0, total}
";

/// Sets a line's quantity (0 removes it). KEYS[1] cart; ARGV: field,
/// quantity, now ms, ttl ms. Returns 0 if the line does not exist, else 1.
const SET_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if tonumber(ARGV[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  local sep = string.find(current, ':', 1, true)
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. string.sub(current, sep + 1))
end
redis.call('HSET', KEYS[1], 'updated', ARGV[3])
if redis.call('HLEN', KEYS[1]) <= 1 then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
";

/// Removes fields whose value is still the given one (pairs field, value in
/// ARGV after now ms and ttl ms): the lines an order was placed for, but not
/// a line changed or added since. KEYS[1] cart. Returns how many went.
const REMOVE_IF_UNCHANGED_SCRIPT: &str = r"
local removed = 0
for i = 3, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
if removed > 0 then
  redis.call('HSET', KEYS[1], 'updated', ARGV[1])
  if redis.call('HLEN', KEYS[1]) <= 1 then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return removed
";

/// A cart as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredCart {
    /// Lines in the order they were first added.
    pub lines: Vec<CartLine>,
    /// Last change, ms since the epoch; `None` for a cart that does not exist.
    pub updated_at_ms: Option<i64>,
    /// Time left before the cart is forgotten; `None` when it does not exist
    /// (or, never by this code, has no expiry).
    pub ttl: Option<Duration>,
    /// The raw field values, for removing exactly these lines at checkout.
    raw: Vec<(String, String)>,
}

/// What adding to a line led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added { quantity: u32 },
    LineQuantityExceeded { quantity: u64 },
    TooManyLines,
}

/// The carts of every user, in one Redis.
#[derive(Clone)]
pub struct CartStore {
    redis: ConnectionManager,
    /// `<redis key prefix>:` (see `--redis-key-prefix`).
    prefix: Arc<str>,
    ttl: Duration,
    add: Script,
    set: Script,
    remove_if_unchanged: Script,
}

impl std::fmt::Debug for CartStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CartStore").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn line_field(product_id: &str) -> String {
    format!("{LINE_FIELD_PREFIX}{product_id}")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl CartStore {
    /// Carts forgotten `ttl` after their last write, under keys that start
    /// with `key_prefix` (the stack's, from `--redis-key-prefix`).
    pub fn new(redis: ConnectionManager, key_prefix: &str, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: format!("{key_prefix}:").into(),
            ttl,
            add: Script::new(ADD_SCRIPT),
            set: Script::new(SET_SCRIPT),
            remove_if_unchanged: Script::new(REMOVE_IF_UNCHANGED_SCRIPT),
        }
    }

    fn cart_key(&self, user_id: &str) -> String {
        // The braces make the user id a Redis Cluster hash tag: a user's cart
        // and checkout records live in one slot.
        format!("{}cart:{{{user_id}}}", self.prefix)
    }

    fn checkout_key(&self, user_id: &str, idempotency_key: &str) -> String {
        format!("{}cart-checkout:{{{user_id}}}:{idempotency_key}", self.prefix)
    }

    /// How long a cart lives after a write.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The user's cart; empty if they have none.
    pub async fn read(&self, user_id: &str) -> Result<StoredCart, Error> {
        let mut redis = self.redis.clone();
        let key = self.cart_key(user_id);
        let (fields, pttl): (Vec<(String, String)>, i64) =
            redis::pipe().hgetall(&key).pttl(&key).query_async(&mut redis).await.map_err(Error::ReadCart)?;
        let mut cart =
            StoredCart { ttl: u64::try_from(pttl).ok().map(Duration::from_millis), ..StoredCart::default() };
        for (field, value) in fields {
            if field == UPDATED_FIELD {
                cart.updated_at_ms = value.parse().ok();
            } else if let Some(product_id) = field.strip_prefix(LINE_FIELD_PREFIX) {
                match domain::decode_line_value(product_id, &value) {
                    Some(line) => cart.lines.push(line),
                    None => tracing::warn!(user_id, field, value, "ignoring a malformed cart line"),
                }
                cart.raw.push((field, value));
            }
        }
        domain::sort_lines(&mut cart.lines);
        Ok(cart)
    }

    /// The quantity of one line (0 when absent).
    pub async fn quantity(&self, user_id: &str, product_id: &str) -> Result<u32, Error> {
        let mut redis = self.redis.clone();
        let value: Option<String> =
            redis.hget(self.cart_key(user_id), line_field(product_id)).await.map_err(Error::ReadCart)?;
        Ok(value
            .and_then(|value| domain::decode_line_value(product_id, &value))
            .map_or(0, |line| line.quantity))
    }

    /// Adds `added` units of a product, enforcing the limits atomically.
    pub async fn add(
        &self,
        user_id: &str,
        product_id: &str,
        added: u32,
        limits: domain::Limits,
        now_ms: i64,
    ) -> Result<AddOutcome, Error> {
        let mut redis = self.redis.clone();
        let (code, value): (i64, i64) = self
            .add
            .key(self.cart_key(user_id))
            .arg(line_field(product_id))
            .arg(added)
            .arg(limits.max_line_quantity)
            .arg(now_ms)
            .arg(millis(self.ttl))
            .arg(limits.max_lines)
            .invoke_async(&mut redis)
            .await
            .map_err(Error::WriteCart)?;
        Ok(match code {
            0 => AddOutcome::Added { quantity: u32::try_from(value).unwrap_or(u32::MAX) },
            1 => AddOutcome::LineQuantityExceeded { quantity: u64::try_from(value).unwrap_or(u64::MAX) },
            _ => AddOutcome::TooManyLines,
        })
    }

    /// Sets a line's quantity; 0 removes it. False if the line does not
    /// exist.
    pub async fn set_quantity(
        &self,
        user_id: &str,
        product_id: &str,
        quantity: u32,
        now_ms: i64,
    ) -> Result<bool, Error> {
        let mut redis = self.redis.clone();
        let found: i64 = self
            .set
            .key(self.cart_key(user_id))
            .arg(line_field(product_id))
            .arg(quantity)
            .arg(now_ms)
            .arg(millis(self.ttl))
            .invoke_async(&mut redis)
            .await
            .map_err(Error::WriteCart)?;
        Ok(found == 1)
    }

    /// Removes a product's line; idempotent.
    pub async fn remove(&self, user_id: &str, product_id: &str, now_ms: i64) -> Result<(), Error> {
        self.set_quantity(user_id, product_id, 0, now_ms).await.map(drop)
    }

    /// Forgets the whole cart; idempotent.
    pub async fn clear(&self, user_id: &str) -> Result<(), Error> {
        let mut redis = self.redis.clone();
        let _: i64 = redis.del(self.cart_key(user_id)).await.map_err(Error::WriteCart)?;
        Ok(())
    }

    /// Removes the lines of `ordered` that are unchanged since it was read:
    /// what an order was just placed for. Lines added or changed meanwhile
    /// stay in the cart.
    pub async fn remove_ordered(
        &self,
        user_id: &str,
        ordered: &StoredCart,
        now_ms: i64,
    ) -> Result<usize, Error> {
        let mut redis = self.redis.clone();
        let mut invocation = self.remove_if_unchanged.key(self.cart_key(user_id));
        invocation.arg(now_ms).arg(millis(self.ttl));
        for (field, value) in &ordered.raw {
            invocation.arg(field).arg(value);
        }
        let removed: i64 = invocation.invoke_async(&mut redis).await.map_err(Error::WriteCart)?;
        Ok(usize::try_from(removed).unwrap_or(0))
    }

    /// The encoded order a checkout with this key placed, if any.
    pub async fn checkout_result(
        &self,
        user_id: &str,
        idempotency_key: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        let mut redis = self.redis.clone();
        redis.get(self.checkout_key(user_id, idempotency_key)).await.map_err(Error::ReadCart)
    }

    /// Remembers the encoded order a checkout placed, for its retries.
    pub async fn record_checkout(
        &self,
        user_id: &str,
        idempotency_key: &str,
        order: &[u8],
    ) -> Result<(), Error> {
        let mut redis = self.redis.clone();
        let _: () = redis
            .pset_ex(self.checkout_key(user_id, idempotency_key), order, millis(self.ttl))
            .await
            .map_err(Error::WriteCart)?;
        Ok(())
    }
}

impl From<RuleError> for Error {
    fn from(error: RuleError) -> Self {
        Error::Validate(error)
    }
}
