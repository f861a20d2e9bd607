//! Keyset pagination, the one way every list pages: a cursor names a row, whose `seq` is where
//! the next page starts, and one row more than the page is fetched to learn whether another
//! page follows. Pages stay stable while rows are added or deleted.

use std::future::Future;

/// One page of a list, in the list's order.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// A page of at most `limit` rows. `cursor` looks up the `seq` of the row named by `after`
/// (`Ok(None)`: it names no row of this list, and then there is no page either); `rows` fetches
/// up to the given count of rows past that position (`None`: from the start).
pub async fn page<T, Cursor, Rows>(
    cursor: Option<Cursor>,
    limit: u32,
    rows: impl FnOnce(Option<i64>, i64) -> Rows,
) -> Result<Option<Page<T>>, sqlx::Error>
where
    Cursor: Future<Output = Result<Option<i64>, sqlx::Error>>,
    Rows: Future<Output = Result<Vec<T>, sqlx::Error>>,
{
    let after = match cursor {
        None => None,
        Some(seq) => match seq.await? {
            Some(seq) => Some(seq),
            None => return Ok(None),
        },
    };
    let mut items = rows(after, i64::from(limit) + 1).await?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Some(Page { items, has_more }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::ready;

    type Seq = std::future::Ready<Result<Option<i64>, sqlx::Error>>;

    #[tokio::test]
    async fn one_row_more_tells_whether_a_page_follows() {
        let page = page(None::<Seq>, 2, |after, fetch| {
            assert_eq!((after, fetch), (None, 3));
            ready(Ok(vec![1, 2, 3]))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!((page.items, page.has_more), (vec![1, 2], true));
        let last = super::page(Some(ready(Ok(Some(7)))), 2, |after, _| {
            assert_eq!(after, Some(7));
            ready(Ok(vec![1]))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!((last.items, last.has_more), (vec![1], false));
    }

    #[tokio::test]
    async fn an_unknown_cursor_is_no_page() {
        // Reading rows would fail this test: none are read after an unknown cursor.
        let found = page(Some(ready(Ok(None))), 2, |_, _| {
            ready(Err::<Vec<i32>, _>(sqlx::Error::RowNotFound))
        })
        .await
        .unwrap();
        assert!(found.is_none());
    }
}
