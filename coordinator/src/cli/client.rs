//! The CLI's connection to a coordinator: the gRPC `SweepService` with the user
//! credential, over TLS for an `https://` coordinator (`tsweep_proto::tls`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tsweep_proto::auth::TokenInterceptor;
use tsweep_proto::tls::{coordinator_endpoint, error_chain, is_tls_failure, COORDINATOR_CA_FILE_SETTING};
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::{GetCurveRequest, ListTasksRequest, MetricPoint, TaskInfo, TaskState};

use super::error::CliError;

pub type SweepClient = SweepServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// How long to wait for the first connection before saying the coordinator is unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tasks asked for per `ListTasks` page.
const PAGE_SIZE: u32 = 1000;

/// Connects to `url` (`http://host:port`, or `https://` trusting `ca_file` or the platform
/// roots). Unreachable: [`CliError::Unavailable`]; a refused TLS handshake (untrusted or
/// wrong certificate) is [`CliError::BadInput`]: repeating cannot help.
pub async fn connect(url: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<SweepClient, CliError> {
    let endpoint = coordinator_endpoint(url, ca_file)
        .map_err(|e| CliError::BadInput(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        if is_tls_failure(&e) {
            CliError::BadInput(format!(
                "tls handshake with the coordinator at {url} failed: {} (is {COORDINATOR_CA_FILE_SETTING} / \
                 --coordinator-ca-file the CA that signed its certificate?)",
                error_chain(&e)
            ))
        } else {
            CliError::Unavailable(format!("cannot reach the coordinator at {url}: {}", error_chain(&e)))
        }
    })?;
    let interceptor = TokenInterceptor::inline(token).map_err(|e| CliError::BadInput(e.to_string()))?;
    Ok(SweepServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(tsweep_proto::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(tsweep_proto::limits::MAX_MESSAGE_BYTES))
}

/// How long a call is repeated while the coordinator answers UNAVAILABLE (Redis away or
/// still connecting), the one retryable code.
pub const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `call` until it succeeds, fails with another code, or `UNAVAILABLE` has lasted
/// [`UNAVAILABLE_PATIENCE`]; waits about 100 ms doubling to 2 s between tries.
pub async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let started = std::time::Instant::now();
    let mut backoff = tsweep_proto::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::Unavailable && started.elapsed() < UNAVAILABLE_PATIENCE => {
                tracing::debug!(message = status.message(), "coordinator unavailable; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}

/// Every task of a sweep, all pages.
pub async fn all_tasks(client: &mut SweepClient, sweep: &str) -> Result<Vec<TaskInfo>, CliError> {
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListTasksRequest {
            sweep: sweep.to_string(),
            state: TaskState::Unspecified.into(),
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
        };
        let page = retry_unavailable(|| {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.list_tasks(request).await }
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

/// The training curves of `task_ids` (`GetCurve`, one call each), by task id; a task the
/// coordinator no longer knows is left out.
pub async fn curves<'a>(
    client: &mut SweepClient,
    sweep: &str,
    task_ids: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<String, Vec<MetricPoint>>, CliError> {
    let mut curves = BTreeMap::new();
    for task_id in task_ids {
        let request = GetCurveRequest { sweep: sweep.to_string(), task_id: task_id.to_string() };
        match retry_unavailable(|| {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.get_curve(request).await }
        })
        .await
        {
            Ok(answer) => {
                curves.insert(task_id.to_string(), answer.into_inner().points);
            }
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(CliError::from_status(&format!("curve of {sweep} task {task_id}"), status)),
        }
    }
    Ok(curves)
}
