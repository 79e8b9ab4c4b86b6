//! The one router: a table of `(method, pattern, route)` lines per function.
//!
//! In a pattern, `{name}` (or `*`) matches one path segment, which is captured in order. The
//! `cargo lambda watch` prefix (`/lambda-url/<function>/…`) is ignored, so a table serves API
//! Gateway and local runs alike. A path that matches a line with another method answers 405 with
//! the allowed methods in a fixed order (GET, POST, PUT, PATCH, DELETE).

use super::{HttpRequest, HttpResponse};

/// One routing line: method, pattern, and the route it names.
pub type RouteLine<R> = (&'static str, &'static str, R);

/// What a request matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<'a, R> {
    /// A route, with the path's captured segments in pattern order.
    Route(R, Vec<&'a str>),
    /// The path exists with other methods: the `Allow` list.
    WrongMethod(String),
    NotFound,
}

impl<R> Matched<'_, R> {
    /// The answer for a request that matched no route: 405 with `Allow`, or 404.
    pub fn refusal(&self) -> Option<HttpResponse> {
        match self {
            Matched::Route(..) => None,
            Matched::WrongMethod(allowed) => Some(HttpResponse::method_not_allowed(allowed)),
            Matched::NotFound => Some(HttpResponse::not_found()),
        }
    }
}

/// The order methods are listed in an `Allow` header.
const METHOD_ORDER: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The path's segments without the `cargo lambda watch` prefix (`/lambda-url/<function>/…`).
pub fn route_segments(path: &str) -> Vec<&str> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.first() == Some(&"lambda-url") && segs.len() >= 2 {
        segs[2..].to_vec()
    } else {
        segs
    }
}

/// The captured segments if `pattern` matches `segs`.
pub fn captures<'a>(pattern: &str, segs: &[&'a str]) -> Option<Vec<&'a str>> {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    if pat.len() != segs.len() {
        return None;
    }
    let mut out = Vec::new();
    for (p, s) in pat.iter().zip(segs) {
        if *p == "*" || (p.starts_with('{') && p.ends_with('}')) {
            out.push(*s);
        } else if p != s {
            return None;
        }
    }
    Some(out)
}

/// Matches `method` + `path` against `table`; the first matching line wins.
pub fn route<'a, R: Copy>(table: &[RouteLine<R>], method: &str, path: &'a str) -> Matched<'a, R> {
    let segs = route_segments(path);
    let mut allowed: Vec<&str> = Vec::new();
    for (m, pattern, r) in table {
        let Some(caps) = captures(pattern, &segs) else {
            continue;
        };
        if *m == "*" || m.eq_ignore_ascii_case(method) {
            return Matched::Route(*r, caps);
        }
        allowed.push(m);
    }
    if allowed.is_empty() {
        return Matched::NotFound;
    }
    let list: Vec<&str> = METHOD_ORDER
        .into_iter()
        .filter(|m| allowed.contains(m))
        .collect();
    Matched::WrongMethod(list.join(", "))
}

/// [`route`] for a request.
pub fn route_request<'a, R: Copy>(table: &[RouteLine<R>], req: &'a HttpRequest) -> Matched<'a, R> {
    route(table, &req.method, &req.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum R {
        Get,
        Put,
        Del,
        List,
        Fees,
    }

    const TABLE: &[RouteLine<R>] = &[
        ("PUT", "/segments/{id}", R::Put),
        ("GET", "/segments/{id}", R::Get),
        ("DELETE", "/segments/{id}", R::Del),
        ("GET", "/segments", R::List),
        ("PUT", "/destinations/{id}/mappings/{segment}/fees", R::Fees),
    ];

    #[test]
    fn matches_captures_and_lists_allowed_methods_in_order() {
        for prefix in ["", "/lambda-url/segment-export"] {
            let p = |s: &str| format!("{prefix}{s}");
            assert_eq!(
                route(TABLE, "GET", &p("/segments/s1")),
                Matched::Route(R::Get, vec!["s1"])
            );
            assert_eq!(
                route(TABLE, "GET", &p("/segments/")),
                Matched::Route(R::List, vec![])
            );
            assert_eq!(
                route(TABLE, "PUT", &p("/destinations/d/mappings/s/fees")),
                Matched::Route(R::Fees, vec!["d", "s"])
            );
            assert_eq!(
                route(TABLE, "POST", &p("/segments/s1")),
                Matched::WrongMethod("GET, PUT, DELETE".into())
            );
            assert_eq!(route(TABLE, "GET", &p("/nope")), Matched::NotFound);
            assert_eq!(
                route(TABLE, "GET", &p("/destinations/d/mappings/s/fees/x")),
                Matched::NotFound
            );
        }
        let r = route(TABLE, "PATCH", "/segments").refusal().unwrap();
        assert_eq!((r.status, r.headers["allow"].as_str()), (405, "GET"));
        assert_eq!(
            route::<R>(TABLE, "GET", "/x").refusal().unwrap().status,
            404
        );
    }
}
