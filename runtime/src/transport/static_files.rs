//! Static files (setting `static_dir`): a folder served at `/` for the
//! paths no route takes (`/` itself is its `index.html`), so one server
//! can hold a web app and its socket (the chat example is served so).
//!
//! Only files inside the folder are served: a path with `..`, a hidden
//! component or a backslash is refused, and the file's real path (links
//! resolved) must still be in the folder. Files over 16 MiB are refused.

use crate::transport::response::{Body, respond, text};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::path::{Component, Path, PathBuf};

/// The largest file served (read whole into memory per request).
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Answers `GET path` from `folder`; `None` when there is no such file.
pub async fn serve(folder: &Path, path: &str) -> Option<Response<Body>> {
    let relative = relative_path(path)?;
    let root = tokio::fs::canonicalize(folder).await.ok()?;
    let mut file = tokio::fs::canonicalize(root.join(&relative)).await.ok()?;
    if !file.starts_with(&root) {
        return None;
    }
    let mut meta = tokio::fs::metadata(&file).await.ok()?;
    if meta.is_dir() {
        file = file.join("index.html");
        meta = tokio::fs::metadata(&file).await.ok()?;
    }
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_FILE {
        return Some(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "this file is over 16 MiB; serve large files from elsewhere\n",
        ));
    }
    let bytes = tokio::fs::read(&file).await.ok()?;
    let mut response = respond(StatusCode::OK, content_type(&file), bytes);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

/// The request path as a path inside the folder, or `None` for one that
/// could leave it or names a hidden file.
fn relative_path(path: &str) -> Option<PathBuf> {
    let path = path.strip_prefix('/')?;
    if path.contains('\\') || path.contains('\0') {
        return None;
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) if !part.to_string_lossy().starts_with('.') => {
                relative.push(part);
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(relative)
}

/// The `Content-Type` for a file, by its extension.
fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_folder_or_name_hidden_files_are_refused() {
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(
            relative_path("/app/main.js"),
            Some(PathBuf::from("app/main.js"))
        );
        assert_eq!(relative_path("/./a.css"), Some(PathBuf::from("a.css")));
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/.env",
            "/a/.git/config",
            "/a\\b",
            "relative",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
        assert_eq!(
            content_type(Path::new("x.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x")), "application/octet-stream");
    }
}
