//! Streaming bags: cells are encoded on a background worker while the caller is
//! still adding them (a scanner adds cells as it segments the smear), so
//! classifying after the last cell only encodes the last partial batch and runs
//! the attention-MIL head.
//!
//! Memory is bounded by the batch, not the bag: the worker turns each full batch
//! into the head's instance vectors (`g` of the feature maps, `k′` floats a
//! cell, 2 KB at the paper's 500) and drops the images and maps; the queue to
//! the worker holds at most one batch, so `add` blocks while the worker is a
//! batch behind. Results equal [`Session::classify`] on the same cells (the
//! same batches are formed in the same order).
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tch::Tensor;

use crate::cell_image::CellImage;
use crate::error::{Error, Result};
use crate::inference::{BagPrediction, Session};
use crate::Progress;

enum Message {
    Cell(CellImage),
    /// Send every instance vector so far (the partial batch encoded, not consumed).
    Flush(Sender<Result<Tensor>>),
}

/// One patient's cells, encoded as they arrive (see the module docs).
pub struct StreamingBag {
    session: Arc<Session>,
    ids: Vec<u64>,
    seen: HashSet<u64>,
    queue: Option<SyncSender<Message>>,
    worker: Option<JoinHandle<()>>,
    encoded: Arc<AtomicUsize>,
}

impl std::fmt::Debug for StreamingBag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingBag")
            .field("cells", &self.ids.len())
            .field("encoded", &self.encoded.load(Ordering::Relaxed))
            .finish()
    }
}

impl StreamingBag {
    /// An empty bag whose cells `session` encodes in the background.
    pub fn new(session: Arc<Session>) -> Result<Self> {
        let capacity = session.batch_size();
        let (queue, rx) = mpsc::sync_channel(capacity);
        let encoded = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (session, encoded) = (session.clone(), encoded.clone());
            std::thread::Builder::new()
                .name("amlmil-stream".into())
                .spawn(move || work(&session, rx, &encoded))
                .map_err(|e| {
                    Error::invalid("bag", format!("cannot start the encoding worker: {e}"))
                })?
        };
        Ok(StreamingBag {
            session,
            ids: Vec::new(),
            seen: HashSet::new(),
            queue: Some(queue),
            worker: Some(worker),
            encoded,
        })
    }

    /// The session this bag encodes with.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Adds a cell; it is encoded once a batch is full. Fails (and adds nothing)
    /// on a duplicate id.
    pub fn add(&mut self, id: u64, cell: CellImage) -> Result<()> {
        if self.seen.contains(&id) {
            return Err(Error::invalid(
                "cell_id",
                format!("{id} is already in this bag"),
            ));
        }
        self.session
            .check_cells(self.ids.len() + 1, "streaming bag")?;
        self.send(Message::Cell(cell))?;
        self.seen.insert(id);
        self.ids.push(id);
        Ok(())
    }

    fn send(&self, m: Message) -> Result<()> {
        self.queue
            .as_ref()
            .and_then(|q| q.send(m).ok())
            .ok_or_else(|| Error::invalid("bag", "the encoding worker has stopped"))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Cell ids in the order they were added.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Cells encoded in full batches so far (the last partial batch is encoded
    /// for each `classify` and stays pending).
    pub fn encoded(&self) -> usize {
        self.encoded.load(Ordering::Relaxed)
    }

    /// Classifies the cells added so far: waits for the worker to encode the rest,
    /// then runs the head. `progress` sees ("encode", cells encoded, cells added)
    /// while waiting and may cancel (the bag stays usable). More cells may be
    /// added afterwards and the bag classified again.
    pub fn classify(&self, progress: Progress) -> Result<BagPrediction> {
        if self.ids.is_empty() {
            return Err(Error::EmptyBag("bag".into()));
        }
        let (tx, rx) = mpsc::channel();
        self.send(Message::Flush(tx))?;
        let total = self.ids.len();
        let z = loop {
            if !progress("encode", self.encoded(), total) {
                return Err(Error::Cancelled(format!(
                    "waiting for {} of {total} cells to be encoded",
                    total - self.encoded()
                )));
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(z) => break z?,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::invalid("bag", "the encoding worker has stopped"))
                }
            }
        };
        progress("encode", total, total);
        self.session.classify_instances(&z, &self.ids)
    }
}

impl Drop for StreamingBag {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The worker's state: cells not yet encoded, instance vectors of the others,
/// and the first encoding error (the bag is then poisoned until cleared).
struct Worker<'a> {
    session: &'a Session,
    encoded: &'a AtomicUsize,
    pending: Vec<CellImage>,
    done: Vec<Tensor>,
    failure: Option<Error>,
    failed: bool,
}

impl Worker<'_> {
    fn encode_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if !self.failed {
            match self.session.instances(&self.pending, &mut |_, _, _| true) {
                Ok(z) => self.done.push(z),
                Err(e) => {
                    self.failure = Some(e);
                    self.failed = true;
                }
            }
        }
        self.encoded
            .fetch_add(self.pending.len(), Ordering::Relaxed);
        self.pending.clear();
    }

    /// Every instance vector so far. The partial batch is encoded for the answer
    /// but stays pending, so later batches are formed exactly as a plain bag's
    /// (and results stay bit-identical to [`Session::classify`]).
    fn flush(&mut self) -> Result<Tensor> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        if self.failed {
            return Err(Error::invalid(
                "bag",
                "a cell of this bag could not be encoded (reported before); clear the bag",
            ));
        }
        let mut parts: Vec<Tensor> = self.done.iter().map(Tensor::shallow_clone).collect();
        if !self.pending.is_empty() {
            parts.push(self.session.instances(&self.pending, &mut |_, _, _| true)?);
        }
        let z = Tensor::f_cat(&parts, 0)?;
        if self.pending.is_empty() {
            self.done = vec![z.shallow_clone()];
        }
        Ok(z)
    }
}

/// The worker thread: batches cells, keeps their instance vectors, answers flushes.
fn work(session: &Session, rx: Receiver<Message>, encoded: &AtomicUsize) {
    let batch = session.batch_size();
    let mut w = Worker {
        session,
        encoded,
        pending: Vec::with_capacity(batch),
        done: Vec::new(),
        failure: None,
        failed: false,
    };
    for message in rx {
        match message {
            Message::Cell(cell) => {
                w.pending.push(cell);
                if w.pending.len() >= batch {
                    w.encode_pending();
                }
            }
            Message::Flush(reply) => {
                let _ = reply.send(w.flush());
            }
        }
    }
}
