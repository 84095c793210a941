//! The demo chat page under `/demo/`, served only with `--demo`. Its files
//! are embedded in the binary at build time, so that a node with the flag
//! serves a working browser client with nothing beside it: the page from
//! `clients/js/demo` and the JavaScript SDK it imports, the committed build
//! in `clients/js/dist` (which `scripts/test-js` keeps equal to a fresh
//! build of the sources), under `/demo/sdk/`. Nothing is cached, so a page
//! always matches the node that serves it.

use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page may load only its own files and open WebSockets to the node
/// that served it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// Every file under `/demo/`: its path there, its content type, its bytes.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", HTML, include_str!("../../../clients/js/demo/index.html")),
    ("app.js", JAVASCRIPT, include_str!("../../../clients/js/demo/app.js")),
    ("style.css", CSS, include_str!("../../../clients/js/demo/style.css")),
    ("sdk/index.js", JAVASCRIPT, include_str!("../../../clients/js/dist/index.js")),
    ("sdk/client.js", JAVASCRIPT, include_str!("../../../clients/js/dist/client.js")),
    ("sdk/protocol.js", JAVASCRIPT, include_str!("../../../clients/js/dist/protocol.js")),
    ("sdk/transports.js", JAVASCRIPT, include_str!("../../../clients/js/dist/transports.js")),
];

/// The answer for `path`, which is `/demo` or starts with `/demo/`; `None`
/// when no such file is embedded. `/demo` redirects to `/demo/`, so that
/// the page's relative links resolve under it.
pub fn respond(path: &str) -> Option<Response<Full<Bytes>>> {
    if path == "/demo" {
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/demo/"));
        return Some(response);
    }
    let name = match path.strip_prefix("/demo/")? {
        "" => "index.html",
        name => name,
    };
    let (_, content_type, text) = FILES.iter().find(|(file, _, _)| *file == name)?;
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    Some(response)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn header(response: &Response<Full<Bytes>>, name: header::HeaderName) -> &str {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn demo_without_slash_redirects_to_the_page() {
        let response = respond("/demo").unwrap();
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header(&response, header::LOCATION), "/demo/");
    }

    #[tokio::test]
    async fn the_page_is_html_never_cached() {
        for path in ["/demo/", "/demo/index.html"] {
            let response = respond(path).unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header(&response, header::CONTENT_TYPE), "text/html; charset=utf-8");
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-store");
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert!(body(response).await.contains(r#"<script type="module" src="app.js"></script>"#));
        }
    }

    #[test]
    fn scripts_and_styles_have_their_content_types() {
        let response = respond("/demo/sdk/client.js").unwrap();
        assert_eq!(header(&response, header::CONTENT_TYPE), "text/javascript; charset=utf-8");
        let response = respond("/demo/style.css").unwrap();
        assert_eq!(header(&response, header::CONTENT_TYPE), "text/css; charset=utf-8");
    }

    #[test]
    fn only_embedded_files_are_served() {
        for path in ["/demo/nope.js", "/demo/sdk/", "/demo/../Cargo.toml", "/demo/sdk/client.d.ts", "/demonstration"] {
            assert!(respond(path).is_none(), "{path}");
        }
    }

    /// The relative module paths in `source`: `from './x.js'`, `import './x.js'`.
    fn relative_imports(source: &str) -> Vec<&str> {
        let mut imports = Vec::new();
        for keyword in ["from ", "import "] {
            for (at, _) in source.match_indices(keyword) {
                let rest = &source[at + keyword.len()..];
                let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else { continue };
                let Some(end) = rest[1..].find(quote) else { continue };
                let target = &rest[1..=end];
                if target.starts_with("./") || target.starts_with("../") {
                    imports.push(target);
                }
            }
        }
        imports
    }

    /// `target` relative to the file at `path` (both under `/demo/`).
    fn resolve(path: &str, target: &str) -> String {
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        for part in target.split('/') {
            match part {
                "." => {}
                ".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        parts.join("/")
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let mut checked = 0;
        for (file, _, text) in FILES.iter().filter(|(_, content_type, _)| *content_type == JAVASCRIPT) {
            for target in relative_imports(text) {
                let path = resolve(&format!("/demo/{file}"), target);
                let response =
                    respond(&path).unwrap_or_else(|| panic!("{file} imports {target}: {path} is not served"));
                assert_eq!(header(&response, header::CONTENT_TYPE), JAVASCRIPT, "{path}");
                checked += 1;
            }
        }
        assert!(checked >= 4, "the page imports the SDK, which imports its modules: {checked} imports found");
    }
}
