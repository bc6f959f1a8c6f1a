//! The one file that names every endpoint: a parsed [`Route`] and its method go to their handler.

use crate::serve::api::installer::Which;
use crate::serve::api::{
    admin, assets, bmc, boot, events, flags, hardware, hosts, installer, media, sessions, timeline,
};
use crate::serve::app::service::Service;
use crate::serve::console::{discover, inventory, login, page};
use crate::serve::web::accept::Handler;
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use crate::serve::web::routes::Route;
use std::sync::Arc;

/// The service is the transport's handler: every request goes to [`handle`], and the
/// transport's counts go to the metrics.
impl Handler for Service {
    fn handle(self: Arc<Self>, req: Req) -> impl std::future::Future<Output = Reply> + Send {
        handle(self, req)
    }

    fn refused_connection(&self) {
        self.metrics.refused_connection();
    }

    fn answered(&self, status: u16) {
        self.metrics.response(status);
    }

    fn tls_handshake(&self, version: &'static str) {
        self.metrics.tls_handshake(version);
    }

    fn tls_handshake_failed(&self, why: crate::serve::web::accept::HandshakeFailure) {
        self.metrics.tls_handshake_failed(why.label());
    }
}

/// Answers one request: a method the route does not take is refused here; every other request
/// goes to its handler, and console answers get the console's headers.
pub async fn handle(svc: Arc<Service>, req: Req) -> Reply {
    if !req.route.allows(req.method.as_str()) {
        let e = match req.route {
            Route::NotFound => HttpError::not_found(
                "no such endpoint; see GET /boot/{host}, /hosts, /hosts/{host}/reimage, /events, /status, /healthz, /metrics",
            ),
            _ => HttpError::method_not_allowed(req.route.allow()),
        };
        return e.into_reply();
    }
    let req = Arc::new(req);
    let console = !matches!(
        req.route,
        Route::Boot(_)
            | Route::BootOther
            | Route::Config { .. }
            | Route::Asset(_)
            | Route::Media(_)
    );
    let page = matches!(req.route, Route::Ui(_));
    let result = match req.route.clone() {
        Route::Healthz => Ok(admin::healthz(&svc)),
        // Its install gauges read the hosts' states: on the blocking pool.
        Route::Metrics => svc.blocking(|svc| admin::metrics(svc)).await,
        Route::Status => admin::status(&svc, &req).await,
        Route::Boot(host) => Ok(boot::boot(&svc, &req, Some(host)).await),
        Route::BootOther => Ok(boot::boot(&svc, &req, None).await),
        Route::Config { host, token, file } => {
            let r = req.clone();
            svc.blocking(move |svc| installer::config(svc, &r, &host, token.as_deref(), file))
                .await
                .and_then(|r| r)
        }
        Route::Asset(path) => {
            let r = req.clone();
            svc.blocking(move |svc| assets::asset(svc, &r, path)).await.and_then(|r| r)
        }
        Route::Media(file) => media::media(&svc, &req, file).await,
        Route::MediaUrl(host) => media::media_url(&svc, &req, host).await,
        Route::BmcMedia(host) if req.method == hyper::Method::PUT => {
            bmc::attach(&svc, &req, host).await
        }
        Route::BmcMedia(host) if req.method == hyper::Method::DELETE => {
            bmc::detach(&svc, &req, host).await
        }
        Route::BmcMedia(host) => bmc::show(&svc, &req, host).await,
        Route::Hosts => hosts::list_hosts(&svc, &req).await,
        Route::Host(host) => hosts::show_host(&svc, &req, host).await,
        Route::Reimage(host) if req.method == hyper::Method::PUT => {
            flags::set_flag(&svc, &req, host).await
        }
        Route::Reimage(host) => flags::cancel(&svc, &req, host).await,
        Route::Hardware(host) => hardware::show(&svc, &req, host).await,
        Route::Power(host) => hardware::power(&svc, &req, host).await,
        Route::Done(host) => installer::callback(&svc, &req, host, Which::Done).await,
        Route::Started(host) => installer::callback(&svc, &req, host, Which::Started).await,
        Route::Failed(host) => installer::callback(&svc, &req, host, Which::Failed).await,
        Route::Events => events::events(&svc, &req).await,
        Route::Reload => admin::reload(&svc, &req).await,
        Route::Ui(file) => page::ui_file(file.as_deref()),
        Route::Session => login::session(&svc, &req).await,
        Route::Sessions => sessions::end_sessions(&svc, &req).await,
        Route::Inventory if req.method == hyper::Method::PUT => {
            inventory::replace_upload(&svc, &req).await
        }
        Route::Inventory => inventory::inventory(&svc, &req).await,
        Route::InventoryCheck => inventory::check_upload(&svc, &req).await,
        Route::InventoryRows => inventory::edit_row(&svc, &req, None).await,
        Route::InventoryRow(host) => inventory::edit_row(&svc, &req, Some(host)).await,
        Route::Discover => discover::discover(&svc, &req).await,
        Route::Timeline(host) => timeline::timeline(&svc, &req, host).await,
        Route::Retry(host) => timeline::retry(&svc, &req, host).await,
        Route::FleetStats => timeline::fleet_stats(&svc, &req).await,
        Route::NotFound => unreachable!("answered above: no method is allowed"),
    };
    let reply = result.unwrap_or_else(HttpError::into_reply);
    if console {
        return page::harden(reply, page);
    }
    reply
}
