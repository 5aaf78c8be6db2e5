//! The playground: a page at `/` to try the served model in a browser.
//!
//! Fill-mask: a text box where `[MASK]` and `[MASK:n]` work and where selected characters can
//! be masked with a button; the answer shows the text with each masked byte filled by its best
//! candidate and, per masked byte, the candidates with probability bars. Classifiers: a text box
//! (text), or a file chooser that also takes a dropped or pasted image, previewed with its size
//! against the server's limits (image; the file's own bytes are sent, for the server to decode);
//! the answer is the labels, best first, with probability bars. Optical flow: two such pickers
//! (earlier and later frame); what the server would refuse and the page can tell (a frame
//! missing, frames of two sizes, under the model's tile, over the pixel limit alone or together,
//! a form over the body limit) is said and not sent; the files go as a multipart form, and the
//! answer is the flow's colour picture, its mean and largest magnitude and its tiles, and a
//! `.flo` download (asked for again when wanted). Multimodal autoencoder: the frames as one
//! `.y4m` video or as image files (sent in natural name order) and a WAV file, chosen or
//! dropped; what the server would refuse and the page can tell (a file missing, another number
//! or size of frames, a video too short, audio at another rate or too short, a form over the
//! body limit) is said and not sent; a request out can be cancelled; the answer is the labels
//! with probability bars and, unless "labels only", the reconstructed frames and an audio player
//! with the WAV to download. The page reads the model's name, task, labels, tile, clip,
//! precision and limits from `/info`, asks for the API key when the server answers 401,
//! and shows errors as the server words them.
//!
//! The page is hand-written HTML, CSS and JavaScript in `crates/perceiver-serve/playground/`,
//! compiled into the binary: nothing is fetched from elsewhere, and its content security policy
//! tells the browser to load nothing but this server's own files.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The page (`GET /`).
pub const INDEX_HTML: &str = include_str!("../playground/index.html");
/// Its style sheet (`GET /playground.css`).
pub const STYLE_CSS: &str = include_str!("../playground/playground.css");
/// Its script (`GET /playground.js`).
pub const SCRIPT_JS: &str = include_str!("../playground/playground.js");

/// Own files only: no inline script, no other origin, not framed by other sites. `blob:`
/// images and media are held by the browser itself: the previews of files the user chose, a
/// video the page decodes into a clip's frames, and a flow's picture as the server answered it;
/// `data:` images and audio are an autoencoder's reconstructed frames and WAV file, from the
/// answer's base64.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes, open to every client (the data it shows comes from the guarded routes).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/playground.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/playground.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT_JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidated on each load, so that a new binary's page is the one shown.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for needle in ["/playground.css", "/playground.js", "href=\"/docs/\""] {
            assert!(INDEX_HTML.contains(needle), "{needle}");
        }
        // No other origin, no inline script or style the policy would block.
        for text in [INDEX_HTML, STYLE_CSS, SCRIPT_JS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
    }
}
