//! Restoring many connections at once: batches of plans (or sockets) on
//! worker threads that each join the caller's network namespace first, so
//! that a takeover of thousands of connections uses every core and every
//! socket lands in the standby's namespace.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd as _;
use std::sync::mpsc;
use std::thread::{self, ScopedJoinHandle};

use super::{RepairedSocket, RestoreError, RestorePlan, restore_error};
use crate::sys::process;

/// Where the calling thread's network namespace is (Linux ≥ 3.17).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Builds every plan on `workers` threads in parallel batches (contiguous runs of
/// `plans`, one per thread); result `i` belongs to `plans[i]`. Every socket is
/// created in the calling thread's network namespace.
pub fn build_all(
    plans: &[RestorePlan],
    workers: usize,
) -> Vec<Result<RepairedSocket, RestoreError>> {
    in_caller_netns(
        plans.iter().collect(),
        workers,
        |plan| (plan.server, plan.client),
        RepairedSocket::build,
    )
}

/// Leaves repair mode on every socket ([`RepairedSocket::leave_repair`]) on
/// `workers` threads; result `i` belongs to `sockets[i]`.
pub fn leave_all(
    sockets: Vec<RepairedSocket>,
    workers: usize,
) -> Vec<Result<TcpStream, RestoreError>> {
    in_caller_netns(
        sockets,
        workers,
        RepairedSocket::flow,
        RepairedSocket::leave_repair,
    )
}

/// Runs `work` over `items` on up to `workers` threads, each in the calling
/// thread's network namespace, and returns the results in order.
///
/// A socket belongs for its whole life to the network namespace of the thread
/// that created it, and a daemon typically enters the standby's namespace with
/// `setns(2)` on one thread only (network namespaces are per thread). A thread
/// created with `clone(CLONE_THREAD)` starts with its creator's namespaces
/// (`copy_namespaces()` in kernel/nsproxy.c shares the creator's `nsproxy`;
/// checked here on 6.18: a thread spawned after `setns` is in the new
/// namespace), so scoped threads spawned from the caller would already be right.
/// Each worker still joins the caller's namespace explicitly, from a descriptor
/// of `/proc/thread-self/ns/net` opened on the calling thread, so that
/// correctness never depends on who created the worker (a pool created earlier,
/// on another thread, would sit in the process's first namespace). The first
/// batch runs on the calling thread itself.
fn in_caller_netns<I, O, F, W>(
    items: Vec<I>,
    workers: usize,
    flow: F,
    work: W,
) -> Vec<Result<O, RestoreError>>
where
    I: Send,
    O: Send,
    F: Fn(&I) -> (SocketAddr, SocketAddr) + Sync,
    W: Fn(I) -> Result<O, RestoreError> + Sync,
{
    let netns = match File::open(THREAD_NETNS) {
        Ok(file) => file,
        Err(err) => return fail_all(items, &flow, &format!("open({THREAD_NETNS})"), &err),
    };
    let mut batches = batches(items, workers).into_iter();
    let first = batches.next().unwrap_or_default();
    let run = |netns: Option<&File>, batch: Vec<I>| run_batch(netns, batch, &flow, &work);
    thread::scope(|s| {
        let others: Vec<_> = batches
            .map(|batch| spawn_batch(s, &netns, batch, &run))
            .collect();
        let mut results = run(None, first);
        for batch in others {
            match batch {
                Job::Running(handle) => match handle.join() {
                    Ok(done) => results.extend(done),
                    Err(payload) => std::panic::resume_unwind(payload),
                },
                Job::Done(done) => results.extend(done),
            }
        }
        results
    })
}

/// A batch of sockets running on its own thread, or already run on the calling thread.
enum Job<'s, O> {
    Running(ScopedJoinHandle<'s, Vec<Result<O, RestoreError>>>),
    Done(Vec<Result<O, RestoreError>>),
}

/// Runs `batch` on a new thread that joins `netns`. The batch is handed over
/// only once the thread exists, so that if it cannot be created the batch runs
/// on the calling thread (already in the right namespace) instead of being lost.
fn spawn_batch<'s, 'e: 's, I, O>(
    s: &'s thread::Scope<'s, 'e>,
    netns: &'e File,
    batch: Vec<I>,
    run: &'e (impl Fn(Option<&File>, Vec<I>) -> Vec<Result<O, RestoreError>> + Sync),
) -> Job<'s, O>
where
    I: Send + 'e,
    O: Send + 'e,
{
    let (tx, rx) = mpsc::sync_channel::<Vec<I>>(1);
    let spawned = thread::Builder::new()
        .name("restore".into())
        .spawn_scoped(s, move || run(Some(netns), rx.recv().unwrap_or_default()));
    match spawned {
        Ok(handle) => match tx.send(batch) {
            Ok(()) => Job::Running(handle),
            Err(mpsc::SendError(batch)) => Job::Done(run(None, batch)),
        },
        Err(_) => Job::Done(run(None, batch)),
    }
}

/// Splits `items` into at most `workers` contiguous batches of nearly equal size.
pub(super) fn batches<I>(items: Vec<I>, workers: usize) -> Vec<Vec<I>> {
    let size = items.len().div_ceil(workers.max(1)).max(1);
    let mut items = items.into_iter().peekable();
    let mut batches = Vec::new();
    while items.peek().is_some() {
        batches.push(items.by_ref().take(size).collect());
    }
    batches
}

/// Joins `netns` (when given), then runs `work` over `batch`.
fn run_batch<I, O>(
    netns: Option<&File>,
    batch: Vec<I>,
    flow: &impl Fn(&I) -> (SocketAddr, SocketAddr),
    work: &impl Fn(I) -> Result<O, RestoreError>,
) -> Vec<Result<O, RestoreError>> {
    if let Some(netns) = netns
        && let Err(err) = process::enter_netns(netns.as_fd())
    {
        return fail_all(batch, flow, err.call, &err.io_error);
    }
    batch.into_iter().map(work).collect()
}

/// The same error for every item.
fn fail_all<I, O>(
    items: Vec<I>,
    flow: &impl Fn(&I) -> (SocketAddr, SocketAddr),
    call: &str,
    err: &io::Error,
) -> Vec<Result<O, RestoreError>> {
    items
        .iter()
        .map(|item| {
            let (server, client) = flow(item);
            Err(restore_error(call, server, client, copy_error(err)))
        })
        .collect()
}

/// `io::Error` is not `Clone`; an OS error is rebuilt from its code.
fn copy_error(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}
