//! The administrator's web console on `listen.admin`: server-rendered HTML (axum, maud), no
//! script. Pages: Overview, Decisions, Accounts, Queue, Quarantine, Domains (`pages.rs`).
//!
//! Every action calls the same library function as its CLI command (`queue::admin`,
//! `quarantine`, `containment`, `accounts`, `records`, `dns_records`, `audit`); the console
//! adds no second implementation.
//!
//! Security: loopback only unless `admin.allow_remote` and `admin.tls` (config validation).
//! Logins share SMTP AUTH's failure counters, turns and blocks (`session.rs`). Every page but
//! the login page needs a session; every POST needs the session's CSRF token, else `403` and
//! one `console_csrf_refused` log line. Responses forbid scripts, framing, referrers and
//! caching (CSP `default-src 'none'`). Request bodies are capped at [`MAX_BODY`]. All data
//! shown comes from mail and is attacker-controlled: maud escapes it (`view.rs`).

pub mod pages;
pub mod session;
pub mod view;

use crate::server::Shared;
use crate::store::Store;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use session::{Session, Sessions};
use std::collections::HashMap;
use std::sync::Arc;

const MAX_BODY: usize = 16 << 10;
const MAX_CONNECTIONS: usize = 64;

pub struct Console {
    pub shared: Arc<Shared>,
    pub store: Store,
    pub sessions: Sessions,
    /// Served over TLS: cookies are `Secure`.
    pub secure: bool,
    /// Our MX listener as bound, for the self-audit's relay attempt.
    pub mx: Option<std::net::SocketAddr>,
}

type C = State<Arc<Console>>;
type Fields = Form<HashMap<String, String>>;

/// Start serving on `l`.
pub fn serve(
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    store: Store,
    mx: Option<std::net::SocketAddr>,
) -> tokio::task::JoinHandle<()> {
    let secure = shared.config.admin.tls;
    let tls = secure.then(|| shared.tls.clone());
    let console = Arc::new(Console {
        shared,
        store,
        sessions: Sessions::default(),
        secure,
        mx,
    });
    crate::http::serve(l, tls, router(console), MAX_CONNECTIONS, "admin")
}

pub fn router(c: Arc<Console>) -> axum::Router {
    axum::Router::new()
        .route("/style.css", get(style))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(pages::overview))
        .route("/decisions", get(pages::decisions))
        .route("/decisions/{id}", get(pages::decision))
        .route("/accounts", get(pages::accounts))
        .route("/accounts/{addr}", get(pages::account))
        .route("/accounts/{addr}/{action}", post(pages::account_action))
        .route("/queue", get(pages::queue))
        .route("/queue/{id}", get(pages::queue_message))
        .route("/queue/{id}/{action}", post(pages::queue_action))
        .route("/quarantine", get(pages::quarantine))
        .route("/quarantine/{id}", get(pages::quarantined))
        .route("/quarantine/{id}/{action}", post(pages::quarantine_action))
        .route("/domains", get(pages::domains))
        .route("/domains/{domain}", get(pages::domain))
        .route("/domains/{domain}/audit", post(pages::domain_audit))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(c.clone(), guard))
        .layer(axum::middleware::map_response(headers))
        .with_state(c)
}

/// What every response carries.
async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// The name a request was addressed to, without its port.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Before any page: the request must be addressed to an address, `localhost` or `hostname`
/// (a page of another site cannot reach the console through DNS rebinding), and a POST must
/// come from the console's own pages (a form on another site cannot even try a login:
/// browsers say where a request comes from in `Sec-Fetch-Site` and `Origin`).
async fn guard(State(c): C, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let h = req.headers();
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = host_name(host);
    // Rebinding needs a name an attacker controls; an address literal is never one (and a
    // listener on 0.0.0.0 is reached by any of the host's addresses).
    let named_ok = name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case(&c.shared.config.hostname)
        || name.parse::<std::net::IpAddr>().is_ok();
    let refuse = |why: &'static str| {
        tracing::warn!(event = "console_request_refused", ip = %peer(req.extensions()), reason = why);
        (StatusCode::FORBIDDEN, "refused\n").into_response()
    };
    if !named_ok {
        return refuse("host");
    }
    if req.method() == axum::http::Method::POST {
        let site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let cross = match (site, origin) {
            (Some(s), _) => s != "same-origin" && s != "none",
            (None, Some(o)) => o.split_once("://").map(|(_, a)| a) != Some(host),
            (None, None) => false,
        };
        if cross {
            return refuse("cross_site");
        }
    }
    next.run(req).await
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css")], view::STYLE).into_response()
}

fn peer(req_ext: &axum::http::Extensions) -> std::net::IpAddr {
    req_ext
        .get::<crate::http::Peer>()
        .map(|p| p.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The logged-in admin, or a redirect to the login page.
pub struct Admin {
    pub session: Session,
    pub token: String,
}

// The error side is the page to answer with, as axum handlers return it; once per request.
#[allow(clippy::result_large_err)]
impl Console {
    pub fn admin(&self, headers: &HeaderMap) -> Result<Admin, Response> {
        let idle = self.shared.config.admin.session_idle.get();
        let to_login = || Redirect::to("/login").into_response();
        let (token, session) = session::cookie_token(headers)
            .and_then(|t| self.sessions.get(&t, idle).map(|s| (t, s)))
            .ok_or_else(to_login)?;
        // Asked at every request, not only at login: whatever ended the right to be here
        // (the CLI, containment, another node) ends the session. Short indexed reads.
        if !self.still_admin(&session) {
            tracing::info!(event = "console_session_ended", user = %session.account);
            self.sessions.remove(&token);
            return Err(to_login());
        }
        Ok(Admin { session, token })
    }

    /// Still an admin, not suspended, and the password unchanged since the login?
    fn still_admin(&self, s: &Session) -> bool {
        let sh = &self.shared;
        matches!(sh.accounts.is_admin(&sh.config, &s.account), Ok(true))
            && matches!(sh.contain.is_suspended(&s.account), Ok(false))
            && matches!(sh.accounts.password_stamp(&s.account), Ok(Some(t)) if t == s.password_stamp)
    }

    /// The admin of a POST whose form carries the session's CSRF token; else a redirect
    /// (no session) or `403`.
    pub fn admin_post(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
        what: &str,
    ) -> Result<Admin, Response> {
        let a = self.admin(headers)?;
        if !session::csrf_ok(&a.session, form.get("csrf").map(String::as_str)) {
            tracing::warn!(event = "console_csrf_refused", user = %a.session.account, action = %what);
            return Err((
                StatusCode::FORBIDDEN,
                maud::html! { h1 { "Refused" } p id="error" { "This action carried no valid CSRF token. Reload the page and try again." } },
            )
                .into_response());
        }
        Ok(a)
    }

    pub fn now(&self) -> i64 {
        self.shared.clock.now_secs()
    }
}

/// Run store work off the async workers; a store failure is a `500` page.
pub async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
) -> Result<R, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => match e.downcast_ref::<crate::accounts::AccountError>() {
            // The administrator's input was wrong: say what the CLI would have said.
            Some(ae) if !matches!(ae, crate::accounts::AccountError::Store(_)) => Err((
                StatusCode::BAD_REQUEST,
                maud::html! { h1 { "Not done" } p id="error" { (ae.to_string()) } },
            )
                .into_response()),
            _ => {
                tracing::error!(event = "console_error", error = %e);
                Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the store failed; see the log",
                )
                    .into_response())
            }
        },
        Err(_) => Err((StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()),
    }
}

async fn login_page(State(c): C, headers: HeaderMap) -> Response {
    if c.admin(&headers).is_ok() {
        return Redirect::to("/").into_response();
    }
    view::login(None).into_response()
}

async fn login(State(c): C, req: axum::extract::Request) -> Response {
    let ip = peer(req.extensions());
    let form = <Fields as axum::extract::FromRequest<()>>::from_request(req, &()).await;
    let Ok(Form(f)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            view::login(Some("Give an account and a password.")),
        )
            .into_response();
    };
    let user = f.get("username").map(String::as_str).unwrap_or("");
    let pw = zeroize::Zeroizing::new(f.get("password").cloned().unwrap_or_default());
    match session::login(&c.shared, ip, user, pw.as_bytes()).await {
        Ok(account) => {
            let stamp = c
                .shared
                .accounts
                .password_stamp(&account)
                .ok()
                .flatten()
                .unwrap_or_default();
            let token = c.sessions.create(&account, stamp);
            (
                [(header::SET_COOKIE, session::set_cookie(&token, c.secure))],
                Redirect::to("/"),
            )
                .into_response()
        }
        Err(r) => {
            let msg = match r {
                session::Refused::Invalid => "Wrong account or password.",
                session::Refused::Blocked => {
                    "Too many failed logins from your network: wait and try again."
                }
                session::Refused::Busy => "The server is busy: try again in a moment.",
            };
            (StatusCode::UNAUTHORIZED, view::login(Some(msg))).into_response()
        }
    }
}

async fn logout(State(c): C, headers: HeaderMap, Form(f): Fields) -> Response {
    let a = match c.admin_post(&headers, &f, "logout") {
        Ok(a) => a,
        Err(r) => return r,
    };
    c.sessions.remove(&a.token);
    (
        [(header::SET_COOKIE, session::set_cookie("", c.secure))],
        Redirect::to("/login"),
    )
        .into_response()
}

/// Query strings of the search page.
pub type Params = Query<HashMap<String, String>>;
/// Path segments.
pub type Seg = Path<String>;
pub type Seg2 = Path<(String, String)>;
