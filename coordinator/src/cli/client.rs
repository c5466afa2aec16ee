//! The CLI's connection to a coordinator: the gRPC `SweepService` with the bearer token.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tsweep_proto::auth::{bearer_interceptor, BearerInterceptor};
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::{ListTasksRequest, TaskInfo};

use super::error::CliError;

pub type SweepClient = SweepServiceClient<InterceptedService<Channel, BearerInterceptor>>;

/// How long to wait for the first connection before saying the coordinator is unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tasks asked for per `ListTasks` page.
const PAGE_SIZE: u32 = 1000;

/// Connects to `url` (`http://host:port`). Unreachable: [`CliError::Unavailable`].
pub async fn connect(url: &str, token: Option<String>) -> Result<SweepClient, CliError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CliError::BadInput(format!("coordinator address {url:?} is not a url: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::Unavailable(format!("cannot reach the coordinator at {url}: {}", source_chain(&e))))?;
    let interceptor = bearer_interceptor(token).map_err(|e| CliError::BadInput(e.to_string()))?;
    Ok(SweepServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

/// Every task of a sweep, all pages.
pub async fn all_tasks(client: &mut SweepClient, sweep: &str) -> Result<Vec<TaskInfo>, CliError> {
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tasks(ListTasksRequest {
                sweep: sweep.to_string(),
                state: String::new(),
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|s| CliError::from_status(&format!("list tasks of {sweep}"), s))?
            .into_inner();
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(tasks)
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
