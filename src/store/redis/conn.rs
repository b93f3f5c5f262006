//! The connection to Redis: one server through a `ConnectionManager`, or a
//! Redis Cluster (`redis+cluster://host:port,host:port,…`) through the redis
//! crate's cluster client.
//!
//! Each workflow's keys share one hash slot (`{workflow}` in every key), so
//! its Lua scripts stay atomic on a cluster. A few pipelines also carry keys
//! outside the workflow's slot (the decision index, the workflow set): on a
//! cluster those are sent one command at a time, each to its own slot.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The scheme that names a cluster.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    /// Connected on first use, and again on the next call after a failure,
    /// so a sidecar that starts before the cluster still starts.
    Cluster(Arc<Cluster>),
}

pub struct Cluster {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

/// The cluster's seed nodes from `redis+cluster://[user:password@]host:port,host:port,…`.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

impl Conn {
    pub fn cluster(nodes: Vec<String>, timeout: Duration) -> redis::RedisResult<Conn> {
        let client = ClusterClient::builder(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()?;
        Ok(Conn::Cluster(Arc::new(Cluster {
            client,
            conn: tokio::sync::OnceCell::new(),
        })))
    }
}

impl Conn {
    /// Whether this is a Redis Cluster, where a pipeline cannot span slots.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl Cluster {
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(cl) => Box::pin(async move { cl.connection().await?.req_packed_command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(cl) => Box::pin(async move {
                let mut c = cl.connection().await?;
                // One command at a time, each routed by its own key: the
                // pipeline's keys may lie in different slots. (Only plain
                // pipelines are sent here: the store uses no MULTI.)
                let mut out = Vec::with_capacity(count);
                for cmd in pipeline.cmd_iter().skip(offset).take(count) {
                    out.push(c.req_packed_command(cmd).await?);
                }
                Ok(out)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_seed_node() {
        assert_eq!(
            cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/"),
            Some(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7001".into()])
        );
        assert_eq!(
            cluster_nodes("redis+cluster://user:secret@a:1,b:2"),
            Some(vec!["redis://user:secret@a:1".into(), "redis://user:secret@b:2".into()])
        );
        assert_eq!(cluster_nodes("redis://a:1"), None);
        assert_eq!(cluster_nodes("redis+cluster://"), None);
    }
}
