//! Walking a paged list call: every list RPC answers one page and a
//! `next_page_token`; the commands read pages until the list ends or they
//! hold as many items as asked for.

/// The most items one request asks for (the scheduler caps each list's
/// page size lower where it must).
const MAX_ASK: usize = 10_000;

/// Reads pages from `fetch` (given the page token, empty for the first
/// page, and how many items are still wanted) until the list ends or
/// `limit` items are in hand. `None`: the whole list.
pub async fn walk<T, E>(
    limit: Option<usize>,
    mut fetch: impl AsyncFnMut(String, u32) -> Result<(Vec<T>, String), E>,
) -> Result<Vec<T>, E> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut all = Vec::new();
    let mut token = String::new();
    while all.len() < limit {
        let want = (limit - all.len()).min(MAX_ASK) as u32;
        let (page, next) = fetch(token, want).await?;
        all.extend(page);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    all.truncate(limit);
    Ok(all)
}

/// The page size to ask for: what is still wanted when a limit was
/// given, else 0 (the list's default).
pub fn page_size(limited: bool, want: u32) -> u32 {
    if limited {
        want
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of 0..n served `per_page` at a time, its token the next index.
    async fn served(n: u32, per_page: u32, limit: Option<usize>) -> (Vec<u32>, u32) {
        let mut calls = 0;
        let all = walk(limit, async |token: String, want: u32| {
            calls += 1;
            let from: u32 = token.parse().unwrap_or(0);
            let to = (from + per_page.min(want)).min(n);
            let next = if to < n {
                to.to_string()
            } else {
                String::new()
            };
            Ok::<_, ()>(((from..to).collect(), next))
        })
        .await
        .unwrap();
        (all, calls)
    }

    #[tokio::test]
    async fn walks_every_page_or_up_to_the_limit() {
        assert_eq!(served(7, 3, None).await, ((0..7).collect(), 3));
        assert_eq!(served(7, 3, Some(4)).await, ((0..4).collect(), 2));
        assert_eq!(served(0, 3, None).await, (vec![], 1));
    }
}
