//! The poller against the simulator: refreshes, spacing, overrides.

use super::*;
use crate::config::Config;
use pve_sim::{self as sim, SimOptions};

const RESOURCES: &str = "GET /cluster/resources";

struct Running {
    sim: sim::SimHandle,
    /// Views the poller sent to the publisher.
    views_sent: Arc<std::sync::atomic::AtomicUsize>,
    stats: Arc<crate::http::PollStats>,
    refresh: mpsc::Sender<Refresh>,
    views: watch::Receiver<Option<Arc<ClusterView>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

const WAIT: Duration = Duration::from_secs(20);

/// A poller on a simulated cluster, with intervals far beyond the test (only the first
/// poll and refreshes poll), and the given refresh spacing.
async fn start(refresh_spacing: Duration) -> Running {
    start_with(refresh_spacing, SimOptions::default()).await
}

/// [`start`] on a simulator with these options (2 nodes and 6 guests unless they say).
async fn start_with(refresh_spacing: Duration, options: SimOptions) -> Running {
    let sim = sim::start(SimOptions {
        nodes: options.nodes.or(Some(2)),
        guests: options.guests.or(Some(6)),
        ..options
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pve-root-ca.pem");
    std::fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    let toml = format!(
        "[proxmox]\nurl = \"{}\"\ntoken = \"{}\"\nca_file = \"{}\"\n",
        sim.base_url(),
        sim::DEFAULT_TOKEN,
        ca.display()
    );
    let config = Config::from_toml_str(&toml, &HashMap::new()).unwrap();
    let client = PveClient::new(&config.clusters[0]).unwrap();
    let (publisher, mut published) = mpsc::channel(64);
    let views_sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = views_sent.clone();
    tokio::spawn(async move {
        while let Some(msg) = published.recv().await {
            if matches!(msg, PublisherMsg::View(_)) {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let (refresh, refresh_rx) = mpsc::channel(16);
    let refresh_self = refresh.clone();
    let (views_tx, views) = watch::channel(None);
    let poller = ClusterPoller {
        id: "pve".into(),
        console_url: client.current_url(),
        client,
        interval: Duration::from_secs(3600),
        slow_interval: Duration::from_secs(3600),
        cadence: Cadence::default(),
        refresh_spacing,
        publisher,
        refresh: refresh_rx,
        views: views_tx,
        stats: Default::default(),
        reporting: ReportRules::default(),
        tasks_interval: Duration::from_secs(3600),
        refresh_self,
        agent: AgentCadence {
            max_per_round: 0,
            ..AgentCadence::default()
        },
        agent_data: Default::default(),
    };
    let stats = poller.stats.clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(stop.clone()));
    Running {
        sim,
        views_sent,
        stats,
        refresh,
        views,
        stop,
        task,
    }
}

impl Running {
    fn polls(&self) -> u64 {
        self.sim.world().counters()[RESOURCES]
    }

    /// After the first poll: queues one refresh per guest for three guests, each with
    /// a status the guest does not have (so each override shows in the view), and
    /// waits for a view that carries all three. Returns those statuses.
    async fn refresh_three_after_first_poll(&mut self) -> Vec<(u32, String)> {
        let first = tokio::time::timeout(WAIT, self.views.wait_for(Option::is_some))
            .await
            .expect("first poll")
            .unwrap()
            .clone()
            .unwrap();
        let fresh: Vec<(u32, String)> = first
            .guests
            .values()
            .take(3)
            .map(|g| {
                let other = if &*g.status == "running" {
                    "stopped"
                } else {
                    "running"
                };
                (g.vmid, other.to_string())
            })
            .collect();
        assert_eq!(fresh.len(), 3);
        fresh
    }

    /// Until no view came for a second: the slow lane's first round has applied its
    /// news (at once, until its end; its end's news waits for a poll, here never).
    async fn settled(&mut self) {
        while tokio::time::timeout(Duration::from_secs(1), self.views.changed())
            .await
            .is_ok()
        {}
    }

    fn views_sent(&self) -> usize {
        self.views_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&self, fresh: &[(u32, String)]) {
        for (vmid, status) in fresh {
            self.refresh
                .try_send(Refresh {
                    status_override: Some((*vmid, status.clone())),
                    ..Refresh::default()
                })
                .unwrap();
        }
    }

    async fn wait_for_statuses(&mut self, fresh: &[(u32, String)]) {
        tokio::time::timeout(
            WAIT,
            self.views.wait_for(|view| {
                view.as_ref().is_some_and(|v| {
                    fresh
                        .iter()
                        .all(|(vmid, status)| *v.guests[vmid].status == **status)
                })
            }),
        )
        .await
        .expect("a view with every fresh status")
        .unwrap();
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        self.sim.stop().await;
    }
}

/// Proxmox writes each row's fields in Perl hash order, another one on every call, and
/// the guest rows in the order of a Perl hash too (`reference/pve-api.md` §2): in a
/// still cluster the next answer has the same rows in other bytes. The next poll must
/// still reuse every guest's row as it would the same bytes: not read again (scanned or
/// decoded), its state the very `Arc` of the last view.
#[tokio::test]
async fn a_still_clusters_next_poll_reuses_every_guest_state_though_proxmox_reorders_its_rows() {
    let options = SimOptions {
        guests: Some(40),
        frozen: true,
        ..SimOptions::default()
    };
    let mut running = start_with(Duration::ZERO, options).await;
    tokio::time::timeout(WAIT, running.views.wait_for(Option::is_some))
        .await
        .expect("first poll")
        .unwrap();
    running.settled().await;
    let before = running.views.borrow().clone().unwrap();
    let polls = running.polls();
    let [reused, read] = running.stats.guest_rows_seen();
    running.refresh.try_send(Refresh::default()).unwrap();
    let after = tokio::time::timeout(WAIT, running.views.changed())
        .await
        .map(|_| running.views.borrow_and_update().clone().unwrap())
        .expect("a view after the refresh");
    assert_eq!(running.polls(), polls + 1, "the refresh polled once");
    assert_eq!(after.guests.len(), 40);
    let [reused_now, read_now] = running.stats.guest_rows_seen();
    assert_eq!(
        (reused_now - reused, read_now - read),
        (40, 0),
        "guest rows (reused, read) by the poll"
    );
    let decoded: Vec<u32> = after
        .guests
        .values()
        .filter(|g| !Arc::ptr_eq(g, &before.guests[&g.vmid]))
        .map(|g| g.vmid)
        .collect();
    assert!(
        decoded.is_empty(),
        "{} of 40 guests have a new state: {decoded:?}",
        decoded.len()
    );
    running.stop().await;
}

/// Several commands ending while the poller is busy: their refreshes share one
/// `/cluster/resources` request, and the view it publishes carries every one of their
/// fresh statuses. Runs on the single-threaded test runtime, so all refreshes are
/// queued before the poller sees the first one.
#[tokio::test]
async fn refreshes_queued_together_are_served_by_one_poll() {
    let mut running = start(Duration::ZERO).await;
    let fresh = running.refresh_three_after_first_poll().await;
    let polls_before = running.polls();
    running.send(&fresh);
    running.wait_for_statuses(&fresh).await;
    let polls = running.polls() - polls_before;
    assert_eq!(polls, 1, "three queued refreshes took {polls} polls");
    running.stop().await;
}

/// Refreshes soon after a poll cost Proxmox nothing at first: the statuses read after
/// the tasks are published from the last answer at once, and one poll follows when
/// the spacing is up (here: never, within the test).
#[tokio::test]
async fn refreshes_within_the_spacing_are_served_from_the_last_answer() {
    let mut running = start(Duration::from_secs(3600)).await;
    let fresh = running.refresh_three_after_first_poll().await;
    let polls_before = running.polls();
    running.send(&fresh);
    // Had a refresh polled, the simulator would have counted the request before the
    // view with the statuses existed.
    running.wait_for_statuses(&fresh).await;
    assert_eq!(running.polls() - polls_before, 0);
    running.stop().await;
}

/// … and the poll does follow once the spacing is up, one for all of them.
#[tokio::test]
async fn a_spaced_refresh_polls_once_when_the_spacing_is_up() {
    let mut running = start(Duration::from_millis(300)).await;
    let fresh = running.refresh_three_after_first_poll().await;
    let polls_before = running.polls();
    running.send(&fresh);
    running.wait_for_statuses(&fresh).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while running.polls() == polls_before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing else asks for a poll: a second one would come from the refreshes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(running.polls() - polls_before, 1);
    // The poll's view still carries the statuses read after the tasks.
    let view = running.views.borrow().clone().unwrap();
    for (vmid, status) in &fresh {
        assert_eq!(&*view.guests[vmid].status, status.as_str());
    }
    running.stop().await;
}

/// A burst of task ends soon after a poll (200 commands one every 50 ms, each task
/// ending on its own): their statuses are published by a rebuild at most every
/// `REBUILD_GAP`, not a whole view each, and the last view carries every one of them.
#[tokio::test]
async fn a_burst_of_task_ends_is_published_by_one_rebuild_per_gap_not_one_each() {
    let mut running = start(Duration::from_secs(3600)).await;
    let fresh = running.refresh_three_after_first_poll().await;
    running.settled().await;
    let views_before = running.views_sent();
    let started = Instant::now();
    for i in 0..20 {
        running.send(&fresh[i % 3..i % 3 + 1]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sending = started.elapsed();
    running.wait_for_statuses(&fresh).await;
    // (a rebuild still due goes out meanwhile)
    tokio::time::sleep(REBUILD_GAP + Duration::from_millis(100)).await;
    let views = running.views_sent() - views_before;
    // One at once, then one per gap while they keep coming (and one due at the end).
    let most = (sending.as_millis() / REBUILD_GAP.as_millis()) as usize + 2;
    assert!(
        views <= most,
        "20 task ends in {sending:?} made {views} views (at most {most})"
    );
    assert!(views >= 1);
    assert_eq!(running.polls(), 1, "the refreshes polled");
    running.stop().await;
}

/// A simulated cluster that never moves, and a client for it.
async fn frozen_cluster() -> (sim::SimHandle, PveClient) {
    let sim = sim::start(SimOptions {
        nodes: Some(2),
        guests: Some(6),
        frozen: true,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let toml = format!(
        "[proxmox]\nurl = \"{}\"\ntoken = \"{}\"\nfingerprint = \"{}\"\n",
        sim.base_url(),
        sim::DEFAULT_TOKEN,
        sim.fingerprint().unwrap()
    );
    let config = Config::from_toml_str(&toml, &HashMap::new()).unwrap();
    let client = PveClient::new(&config.clusters[0]).unwrap();
    (sim, client)
}

/// A slow round that learns nothing new hands nothing on: every round the poller is
/// told of rebuilds a view of the whole cluster and the publisher compares every object.
/// The slow lane alone on `client`, planning from the node and storage rows of `all`,
/// with `view` as the published view; its news, and what stops it.
struct LaneRun {
    news: watch::Receiver<Arc<SlowData>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    // Kept open: the lane reads them.
    _resources: watch::Sender<Arc<Vec<Resource>>>,
    _views: watch::Sender<Option<Arc<ClusterView>>>,
    _backup_logs: mpsc::Sender<(String, String)>,
    _reread: mpsc::Sender<u32>,
}

fn run_slow_lane(
    client: PveClient,
    all: Vec<Resource>,
    view: Option<ClusterView>,
    interval: Duration,
) -> LaneRun {
    let rows: Vec<Resource> = all
        .into_iter()
        .filter(|r| matches!(r.kind, ResourceKind::Node | ResourceKind::Storage))
        .collect();
    let (resources_tx, resources) = watch::channel(Arc::new(rows));
    let (out, news) = watch::channel(Arc::new(SlowData::default()));
    let (views_tx, views) = watch::channel(view.map(Arc::new));
    let (logs_tx, backup_logs) = mpsc::channel(1);
    let (reread_tx, reread) = mpsc::channel(1);
    let lane = SlowLane {
        client,
        interval,
        cadence: Cadence::default(),
        resources,
        out,
        reread: Arc::new(tokio::sync::Notify::new()),
        backup_logs,
        guests: snapshots::GuestFeed { views, reread },
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(slow_lane(lane, stop.clone()));
    LaneRun {
        news,
        stop,
        task,
        _resources: resources_tx,
        _views: views_tx,
        _backup_logs: logs_tx,
        _reread: reread_tx,
    }
}

#[tokio::test]
async fn the_first_slow_round_sends_nodes_and_backups_before_it_reads_snapshot_lists() {
    let (sim, client) = frozen_cluster().await;
    let all = client.cluster_resources().await.unwrap();
    // A view is there: the first round has a snapshot list to read per guest.
    let view = crate::model::tests::first_view("c", "", &all);
    let LaneRun {
        mut news,
        stop,
        task,
        ..
    } = run_slow_lane(client, all, Some(view), Duration::from_secs(600));
    // First what its health requests said (guests' discovery waits for it), before
    // anything else
    tokio::time::timeout(WAIT, news.changed())
        .await
        .unwrap()
        .unwrap();
    let health = news.borrow_and_update().clone();
    assert!(!health.health.pending && health.health.known.replication);
    assert!(health.pve_version.is_none() && health.node_status.is_empty());
    tokio::time::timeout(WAIT, news.changed())
        .await
        .unwrap()
        .unwrap();
    let first = news.borrow_and_update().clone();
    assert!(first.pve_version.is_some() && !first.node_status.is_empty());
    assert!(first.backups_read, "the backup storages were read");
    assert!(first.snapshots.is_empty(), "sent before any snapshot list");
    // The rest of the round follows: every guest's list.
    tokio::time::timeout(WAIT, news.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(!news.borrow().snapshots.is_empty());
    // The backups were kept once, at the early news: the end of the round sends the
    // very same map, not a copy (the lane keeps one map for what it keeps and sends).
    assert!(Arc::ptr_eq(
        &news.borrow().newest_backup,
        &first.newest_backup
    ));
    stop.cancel();
    task.await.unwrap();
    sim.stop().await;
}

#[tokio::test]
async fn a_slow_round_that_learns_nothing_new_sends_no_news() {
    let (sim, client) = frozen_cluster().await;
    let all = client.cluster_resources().await.unwrap();
    let LaneRun {
        mut news,
        stop,
        task,
        ..
    } = run_slow_lane(client, all, None, Duration::from_millis(500));
    // A round asks for the version once; round n has been sent once round n + 1 asks.
    let rounds_begun = || {
        sim.world()
            .counters()
            .get("GET /version")
            .copied()
            .unwrap_or(0)
    };
    let wait_for_round = |n: u64| async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        while rounds_begun() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {n} never began"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The first rounds learn the cluster (the per-node details take two rounds).
    wait_for_round(5).await;
    let settled = news.borrow_and_update().clone();
    assert!(
        settled.pve_version.is_some(),
        "the rounds learned the cluster"
    );
    wait_for_round(8).await;
    assert!(
        !news.has_changed().unwrap(),
        "two rounds of the same answers were sent again"
    );
    assert!(Arc::ptr_eq(&settled, &news.borrow()));
    stop.cancel();
    task.await.unwrap();
    sim.stop().await;
}
