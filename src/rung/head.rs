//! The size of a guest request's header section, counted the same way on the explicit
//! listener and inside bump sessions (HTTP/1.1 and HTTP/2), and the check against
//! `proxy.max_header_bytes`.
//!
//! The count is the HTTP/1.1 wire size: the request line (`METHOD target HTTP/x.y` and CRLF),
//! `name: value` and CRLF per field, and the blank line. The protocol layers bound what they
//! buffer too (hyper's HTTP/1 read buffer, HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`), but a
//! buffer is not a header limit: a head can arrive whole in one read past it, and HTTP/2
//! counts 32 bytes of overhead per field. This count is the limit the proxy promises, applied
//! before anything is forwarded.

use http::{Request, Uri};

/// `METHOD SP target SP HTTP/x.y CRLF` minus the method and target.
const REQUEST_LINE_OVERHEAD: usize = 1 + 1 + "HTTP/1.1".len() + 2;
/// `: ` and CRLF around each field.
const FIELD_OVERHEAD: usize = 4;
/// The blank line that ends the head.
const END_OVERHEAD: usize = 2;

fn target_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

/// The request's header section in bytes, as it would be written in HTTP/1.1.
pub fn section_len<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + target_len(req.uri()) + REQUEST_LINE_OVERHEAD;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
        .sum();
    line + fields + END_OVERHEAD
}

/// `Err` with a cause for a [`HeadersTooLarge`](crate::refusal::Kind::HeadersTooLarge)
/// refusal when the header section is over `max` bytes.
pub fn check<B>(req: &Request<B>, max: usize) -> Result<(), String> {
    let len = section_len(req);
    if len > max {
        return Err(format!(
            "its header section is {len} bytes, over the {max}-byte limit (proxy.max_header_bytes)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_http1_wire_size() {
        let wire = "GET http://a.test:8080/p?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nX-A: bb\r\n\r\n";
        let req = Request::get("http://a.test:8080/p?q=1")
            .header("host", "a.test:8080")
            .header("x-a", "bb")
            .body(())
            .unwrap();
        assert_eq!(section_len(&req), wire.len());
        let origin = Request::get("/p").header("host", "a").body(()).unwrap();
        assert_eq!(
            section_len(&origin),
            "GET /p HTTP/1.1\r\nhost: a\r\n\r\n".len()
        );
        let connect = Request::connect("a.test:443").body(()).unwrap();
        assert_eq!(
            section_len(&connect),
            "CONNECT a.test:443 HTTP/1.1\r\n\r\n".len()
        );
    }

    #[test]
    fn repeated_fields_all_count() {
        let req = Request::get("/")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        assert_eq!(
            section_len(&req),
            "GET / HTTP/1.1\r\ncookie: a=1\r\ncookie: b=2\r\n\r\n".len()
        );
        assert!(check(&req, 1000).is_ok());
        let err = check(&req, 20).unwrap_err();
        assert!(err.contains("over the 20-byte limit"), "{err}");
    }
}
