//! Cursor paging, the same for every list call: a page size with a
//! default and a maximum, a byte bound so no reply nears a client's 4 MiB
//! decode limit, and an opaque page token that names the list and the
//! last key given out. Each list walks its own order from the key after
//! the token's; this module only reads and writes tokens and cuts pages.

use std::fmt::Display;
use std::str::FromStr;

use tonic::Status;

/// The most a page's items may encode to. A page holds at least one item
/// whatever its size (no single item comes near the client's limit).
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// What prefixes every token, so a token of another version is refused.
const TOKEN_PREFIX: &str = "edupool-page-v1";

/// How many items one list gives a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize {
    pub default: u32,
    pub max: u32,
}

/// Jobs, tenants, nodes, tokens, prices and budgets.
pub const SMALL: PageSize = PageSize {
    default: 100,
    max: 1000,
};
/// Audit records, usage rows and ledger records: small items read in bulk.
pub const BULK: PageSize = PageSize {
    default: 1000,
    max: 10_000,
};

/// A page asked for: how many items, and after which key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest<K> {
    pub size: usize,
    /// The last key of the previous page; `None` for the first page.
    pub after: Option<K>,
}

/// Reads a request's paging fields for the list `list` (its name is in
/// the token, so one list's token is refused by another).
pub fn request<K: FromStr>(
    list: &'static str,
    sizes: PageSize,
    page_size: u32,
    token: &str,
) -> Result<PageRequest<K>, Status> {
    let size = match page_size {
        0 => sizes.default,
        n => n.min(sizes.max),
    } as usize;
    let after = match token {
        "" => None,
        t => Some(decode(list, t)?),
    };
    Ok(PageRequest { size, after })
}

fn decode<K: FromStr>(list: &str, token: &str) -> Result<K, Status> {
    let bad = |why: &str| {
        Status::invalid_argument(format!(
            "page_token is {why}: pass the next_page_token of the previous {list} reply unchanged, or none for the first page"
        ))
    };
    let text = hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad("not one this scheduler gave out"))?;
    let mut parts = text.splitn(3, '/');
    let (Some(TOKEN_PREFIX), Some(of), Some(key)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not one this scheduler gave out"));
    };
    if of != list {
        return Err(bad(&format!(
            "from the {} list, not the {list} list",
            super::convert::truncate(of)
        )));
    }
    key.parse()
        .map_err(|_| bad("not one this scheduler gave out"))
}

/// The token that continues a list after `key`.
pub fn token(list: &str, key: impl Display) -> String {
    hex::encode(format!("{TOKEN_PREFIX}/{list}/{key}"))
}

/// Cuts a page from `items` (already in the list's order, starting after
/// the request's key): at most `size` items and `MAX_PAGE_BYTES`, and a
/// next-page token when any item is left.
pub fn cut<K: Display, T: prost::Message>(
    list: &str,
    size: usize,
    items: impl Iterator<Item = (K, T)>,
) -> (Vec<T>, String) {
    let mut page = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    for (key, item) in items {
        // Each item is a length-delimited field: up to 5 bytes of tag and
        // length besides its own.
        let len = item.encoded_len() + 5;
        if page.len() == size || (!page.is_empty() && bytes + len > MAX_PAGE_BYTES) {
            let next = last.map(|k| token(list, k)).unwrap_or_default();
            return (page, next);
        }
        bytes += len;
        page.push(item);
        last = Some(key);
    }
    (page, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edupool_proto::v1 as pb;
    use tonic::Code;

    fn tenant(name: &str) -> pb::Tenant {
        pb::Tenant {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pages_follow_their_tokens_to_the_end() {
        let all: Vec<u32> = (1..=7).collect();
        let mut after: Option<u32> = None;
        let mut seen = vec![];
        let mut pages = 0;
        loop {
            let items = all
                .iter()
                .filter(|k| after.is_none_or(|a| **k > a))
                .map(|k| (*k, tenant(&k.to_string())));
            let (page, next) = cut("tenants", 3, items);
            pages += 1;
            seen.extend(page.into_iter().map(|t| t.name));
            if next.is_empty() {
                break;
            }
            after = request::<u32>("tenants", SMALL, 3, &next).unwrap().after;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ["1", "2", "3", "4", "5", "6", "7"]);
    }

    #[test]
    fn a_page_is_bounded_in_bytes() {
        let big = "x".repeat(300 * 1024);
        let items = (0..10u32).map(|k| (k, tenant(&big)));
        let (page, next) = cut("tenants", 1000, items);
        assert_eq!(page.len(), 3);
        let bytes: usize = page.iter().map(prost::Message::encoded_len).sum();
        assert!(bytes <= MAX_PAGE_BYTES);
        assert_eq!(
            request::<u32>("tenants", SMALL, 0, &next).unwrap().after,
            Some(2)
        );
        // One item larger than the bound still comes, alone.
        let huge = "x".repeat(2 * MAX_PAGE_BYTES);
        let (page, next) = cut("tenants", 10, (0..2u32).map(|k| (k, tenant(&huge))));
        assert_eq!((page.len(), next.is_empty()), (1, false));
    }

    #[test]
    fn sizes_have_a_default_and_a_maximum() {
        let size = |n| request::<u32>("jobs", SMALL, n, "").unwrap().size;
        assert_eq!((size(0), size(5), size(50_000)), (100, 5, 1000));
    }

    #[test]
    fn bad_tokens_are_invalid_arguments() {
        for bad in [
            "zz",
            "00",
            &hex::encode("edupool-page-v1/jobs/abc"),
            "x".repeat(100_000).as_str(),
        ] {
            let err = request::<u64>("jobs", SMALL, 0, bad).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert_eq!(
                err.message(),
                "page_token is not one this scheduler gave out: pass the next_page_token of the previous jobs reply unchanged, or none for the first page"
            );
        }
        let err = request::<u64>("jobs", SMALL, 0, &token("nodes", "n1")).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with("page_token is from the nodes list, not the jobs list"),
            "{}",
            err.message()
        );
    }
}
