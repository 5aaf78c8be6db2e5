//! Dynamic batching: one model thread owns the forward pass; HTTP handlers put inputs on its
//! queue and await a one-shot answer.
//!
//! One engine serves every task: an input is a fill-mask text, a text classifier's ids, an
//! image classifier's pixels, one tile of a pair of frames for optical flow, or one part of a
//! clip to autoencode ([`Input`]), prepared (tokenized, decoded, resized, scaled) by the
//! handler before it is queued, so the model thread only runs forward passes. A flow request
//! is queued as its tiles, one forward pass each, and an autoencoding request as its clip's
//! encoding and then its decoder's chunks ([`ClipPart`]): a tile, or a clip, is seconds of work
//! on a released model, so a large request does not hold the thread for minutes, a health
//! probe waits for one piece at most, and a client that leaves has its remaining pieces
//! dropped. Such requests take turns, a piece each, so that a small one is not queued behind
//! all of a large one's pieces; past a shutdown's deadline the pieces not started are answered
//! [`InferError::Stopped`] rather than run.
//!
//! The thread blocks until an input arrives, then takes everything queued since, and packs a
//! batch oldest first until the next input would break the token budget (the inputs' lengths
//! summed: the engine pads nothing) or the request cap. Images count no tokens: every image of
//! a model is preprocessed to the same size, so `max_batch_requests` alone bounds a pass of
//! images (an ImageNet Perceiver's image is 50,176 encoder rows, far above the token budget's
//! default, which would otherwise run each image alone). A batch holds inputs of one kind. While one forward pass runs, the next
//! batch fills up by itself (text-embeddings-inference's design, with the queue and the model on
//! one thread since there is one model and no prefetching to gain on a CPU).
//!
//! That alone splits busy clients into cohorts: the clients answered by one pass send their next
//! request while the following pass runs, so 16 clients settle into two alternating batches of
//! about 8. So the thread may hold a batch back for a short while ([`BatchLimits::max_wait`]),
//! but only until as many inputs wait as were waiting plus answered when the last pass ended:
//! the clients just answered usually come straight back. A lone client is never held (one
//! answered, one waiting), and a burst that does not come back costs one wait at most, since
//! the expectation is reset after every pass.
//!
//! An input whose client went away (its receiver dropped: hyper drops the handler future of a
//! closed connection) is skipped before it costs a forward pass. A batch that fails, or
//! panics, answers each of its inputs with the error, and a failed piece the rest of its
//! request's pieces; the thread carries on. The thread ends
//! when every [`Infer`] handle is gone and the queue is empty, so a graceful shutdown finishes
//! what was accepted.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use perceiver::decoder::MultimodalQueries;
use perceiver::preprocess::FramePair;
use perceiver::tasks::flow::{OpticalFlow, Tile};
use perceiver::{
    Autoencoder, Classifier, DecodedQueries, EncodedClip, FillMask, FillMaskOutput, LabelScore, MaskedText,
    ModelInput, Pixels,
};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::error::ServeError;
use crate::metrics::Metrics;

/// How large one forward pass may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most tokens (the inputs' lengths summed: the engine does not pad) in one pass; at least
    /// the model's positions.
    pub max_batch_tokens: usize,
    /// Most inputs in one pass.
    pub max_batch_requests: usize,
    /// Longest a batch is held back for the clients the last pass answered (zero: never).
    pub max_wait: Duration,
}

/// The task a service runs: what its model is for.
#[derive(Debug)]
pub enum Task {
    /// A masked language model: `POST /fill-mask`.
    FillMask(FillMask),
    /// A text or image classifier: `POST /classify`.
    Classifier(Classifier),
    /// An optical-flow model: `POST /flow`.
    Flow(OpticalFlow),
    /// A multimodal autoencoder: `POST /autoencode`.
    Autoencoder(Autoencoder),
}

impl Task {
    /// The Hugging Face pipeline name: `fill-mask`, `text-classification` or
    /// `image-classification`; `optical-flow` for a flow model and `multimodal-autoencoding`
    /// for an autoencoder (tasks with no pipeline).
    pub fn name(&self) -> &'static str {
        match self {
            Task::FillMask(_) => crate::FILL_MASK_TASK,
            Task::Classifier(c) if c.reads_images() => crate::IMAGE_CLASSIFICATION_TASK,
            Task::Classifier(_) => crate::TEXT_CLASSIFICATION_TASK,
            Task::Flow(_) => crate::OPTICAL_FLOW_TASK,
            Task::Autoencoder(_) => crate::AUTOENCODING_TASK,
        }
    }

    /// The route that answers this task.
    pub fn route(&self) -> &'static str {
        match self {
            Task::FillMask(_) => "/fill-mask",
            Task::Classifier(_) => "/classify",
            Task::Flow(_) => "/flow",
            Task::Autoencoder(_) => "/autoencode",
        }
    }

    /// The model.
    pub fn model(&self) -> &perceiver::PerceiverModel {
        match self {
            Task::FillMask(fill) => fill.model(),
            Task::Classifier(classifier) => classifier.model(),
            Task::Flow(flow) => flow.model(),
            Task::Autoencoder(autoencoder) => autoencoder.model(),
        }
    }

    /// One forward pass over inputs of one kind, the kind this task takes; at most `top_k`
    /// candidates per mask or labels per input.
    fn run(&self, inputs: &[&Input], top_k: usize) -> Result<Vec<Raw>, String> {
        let wrong = |input: &Input| {
            Err(format!(
                "a {} model cannot take {}",
                self.name(),
                input.describe()
            ))
        };
        match (self, inputs.first()) {
            (_, None) => Ok(Vec::new()),
            (Task::FillMask(fill), Some(_)) => {
                let mut texts = Vec::with_capacity(inputs.len());
                for input in inputs {
                    match input {
                        Input::Masked(text) => texts.push(text),
                        other => return wrong(other),
                    }
                }
                let outputs = fill.predict(&texts, top_k).map_err(|e| e.to_string())?;
                Ok(outputs.into_iter().map(Raw::Masks).collect())
            }
            (Task::Classifier(classifier), Some(Input::Tokens(_))) => {
                let mut ids = Vec::with_capacity(inputs.len());
                for input in inputs {
                    match input {
                        Input::Tokens(i) => ids.push(i.as_slice()),
                        other => return wrong(other),
                    }
                }
                let ranked = classifier
                    .classify(ModelInput::Tokens(&ids), top_k)
                    .map_err(|e| e.to_string())?;
                Ok(ranked.into_iter().map(Raw::Labels).collect())
            }
            (Task::Classifier(classifier), Some(Input::Pixels(_))) => {
                let mut images = Vec::with_capacity(inputs.len());
                for input in inputs {
                    match input {
                        Input::Pixels(p) => images.push(p),
                        other => return wrong(other),
                    }
                }
                let ranked = classifier
                    .classify_pixels(&images, top_k)
                    .map_err(|e| e.to_string())?;
                Ok(ranked.into_iter().map(Raw::Labels).collect())
            }
            (Task::Classifier(_), Some(other)) => wrong(other),
            (Task::Flow(flow), Some(_)) => {
                let mut flows = Vec::with_capacity(inputs.len());
                for input in inputs {
                    match input {
                        Input::FlowTile { frames, tile } => flows.push(Raw::Flow(
                            flow.tile_flow(&frames.pair, *tile).map_err(|e| e.to_string())?,
                        )),
                        other => return wrong(other),
                    }
                }
                Ok(flows)
            }
            (Task::Autoencoder(autoencoder), Some(_)) => {
                let mut decoded = Vec::with_capacity(inputs.len());
                for input in inputs {
                    match input {
                        Input::ClipPart { clip, part } => decoded.push(Raw::Decoded(
                            clip.run(autoencoder, part).map_err(|e| e.to_string())?,
                        )),
                        other => return wrong(other),
                    }
                }
                Ok(decoded)
            }
        }
    }
}

/// One input, prepared by the handler for the model thread.
#[derive(Debug, Clone)]
pub enum Input {
    /// A fill-mask text, tokenized, with its masks.
    Masked(MaskedText),
    /// A text classifier's input: the text's ids, `[CLS]` … `[SEP]`.
    Tokens(Vec<u32>),
    /// An image classifier's input: the image as its processor prepares it.
    Pixels(Pixels),
    /// One tile of a flow request's frames: a forward pass of its own (see the module docs).
    FlowTile {
        /// The request's frames, shared by its tiles.
        frames: Arc<Frames>,
        /// Which window of them.
        tile: Tile,
    },
    /// One part of an autoencoding request's clip: a forward pass of its own (see the module
    /// docs).
    ClipPart {
        /// The request's clip, shared by its parts.
        clip: Arc<Clip>,
        /// What this part does.
        part: ClipPart,
    },
}

/// A flow request's prepared frames, and the request's share of the service's pixel budget,
/// which its handler and then its answer hold too: the frames go when the last of the
/// request's tiles lets go of them, the share once the answer is sent, so that the frames and
/// answers of every request in flight stay within the budget.
#[derive(Debug)]
pub struct Frames {
    /// Both frames, scaled.
    pub pair: FramePair,
    /// The request's share of the pixel budget (none for a health probe), which its handler
    /// also holds until the answer is sent.
    pub budget: Option<Arc<OwnedSemaphorePermit>>,
}

/// An autoencoding request's clip, and its share of the service's pixel budget (as
/// [`Frames`]'): the frames and audio until the clip is encoded, then its latents and the
/// decoder's keys and values of them, which every later part decodes from. The parts of one
/// request run in the order they were submitted.
#[derive(Debug)]
pub struct Clip {
    input: Mutex<Option<(Vec<Pixels>, Vec<f32>)>>,
    /// The encoded clip, or why it could not be encoded.
    encoded: OnceLock<Result<EncodedClip, String>>,
    /// The request's share of the pixel budget (none for a health probe), which its handler
    /// also holds until the answer is sent.
    pub budget: Option<Arc<OwnedSemaphorePermit>>,
}

/// What one part of a clip's request runs.
#[derive(Debug, Clone, Copy)]
pub enum ClipPart {
    /// Encodes the clip (the first part of a request), then decodes these queries.
    Encode(ClipQueries),
    /// Decodes these queries from the clip the first part encoded.
    Decode(ClipQueries),
}

/// Which queries a clip part decodes, named rather than listed: a request's parts wait in the
/// queue, and a released clip's chunks list 800,000 pixels between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipQueries {
    /// Chunk `i` of the task's chunks ([`Autoencoder::chunk`]).
    Chunk(usize),
    /// The label's query alone ([`Autoencoder::label_query`]).
    Label,
}

impl ClipQueries {
    fn of(self, task: &Autoencoder) -> MultimodalQueries {
        match self {
            ClipQueries::Chunk(i) => task.chunk(i),
            ClipQueries::Label => task.label_query(),
        }
    }
}

impl Clip {
    /// A clip of the model's frames and audio (as the task's reader gives them).
    pub fn new(frames: Vec<Pixels>, audio: Vec<f32>, budget: Option<Arc<OwnedSemaphorePermit>>) -> Self {
        Self {
            input: Mutex::new(Some((frames, audio))),
            encoded: OnceLock::new(),
            budget,
        }
    }

    fn run(&self, task: &Autoencoder, part: &ClipPart) -> perceiver::Result<DecodedQueries> {
        let failed = perceiver::Error::InvalidInput;
        let encoded = match part {
            ClipPart::Encode(_) => {
                // The frames are not needed once encoded: their memory goes now.
                let taken = self.input.lock().unwrap_or_else(|e| e.into_inner()).take();
                let Some((frames, audio)) = taken else {
                    return Err(failed("the clip was encoded twice (please report)".into()));
                };
                let encoded = task.encode(frames, audio).map_err(|e| e.to_string());
                self.encoded.get_or_init(|| encoded)
            }
            // The encoding came first (a request's parts run in order); if it failed, its
            // request has been answered why, and the parts after it fail with it.
            ClipPart::Decode(_) => self
                .encoded
                .get()
                .ok_or_else(|| failed("the clip was not encoded: its encoding failed".into()))?,
        };
        let (ClipPart::Encode(queries) | ClipPart::Decode(queries)) = *part;
        task.decode(
            encoded.as_ref().map_err(|e| failed(e.clone()))?,
            &queries.of(task),
        )
    }
}

impl Input {
    /// Its share of the token budget: a text's ids; nothing for an image or a piece of a
    /// longer request (see the module docs).
    fn tokens(&self) -> usize {
        match self {
            Input::Masked(text) => text.ids.len(),
            Input::Tokens(ids) => ids.len(),
            Input::Pixels(_) | Input::FlowTile { .. } | Input::ClipPart { .. } => 0,
        }
    }

    /// The request this input is one piece of (a flow tile's frames, a clip part's clip), as
    /// an identity; `None` for an input that is a whole request's. A piece runs alone.
    fn piece_of(&self) -> Option<*const ()> {
        match self {
            Input::FlowTile { frames, .. } => Some(Arc::as_ptr(frames).cast()),
            Input::ClipPart { clip, .. } => Some(Arc::as_ptr(clip).cast()),
            _ => None,
        }
    }

    /// Whether it counts against the token budget.
    fn is_text(&self) -> bool {
        matches!(self, Input::Masked(_) | Input::Tokens(_))
    }

    fn describe(&self) -> &'static str {
        match self {
            Input::Masked(_) => "a masked text",
            Input::Tokens(_) => "a text to classify",
            Input::Pixels(_) => "an image",
            Input::FlowTile { .. } => "a flow tile",
            Input::ClipPart { .. } => "a part of a clip",
        }
    }
}

/// What a forward pass gives one input, before it is paired with its job.
enum Raw {
    Masks(FillMaskOutput),
    Labels(Vec<LabelScore>),
    Flow(Vec<f32>),
    Decoded(DecodedQueries),
}

/// The answer to one input.
#[derive(Debug, Clone)]
pub enum Output {
    /// A fill-mask text's candidates.
    Filled(Answer),
    /// A classified input's labels, best first, at most the submitted `top_k`.
    Labels(Vec<LabelScore>),
    /// A tile's flow, as [`OpticalFlow::tile_flow`] gives it.
    Flow(Vec<f32>),
    /// A clip part's decoded queries, as [`Autoencoder::decode`] gives them.
    Decoded(DecodedQueries),
}

/// A filled input, handed back with the input it answers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The tokenized input, as submitted.
    pub input: MaskedText,
    /// Its masks' candidates, at most the submitted `top_k` each.
    pub output: FillMaskOutput,
}

/// Why an input got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// The model thread is gone (the service is stopping).
    #[error("the model is not running")]
    Stopped,
    /// The forward pass failed or panicked.
    #[error("inference failed: {0}")]
    Failed(String),
}

type Reply = oneshot::Sender<Result<Output, InferError>>;

/// The answer to one queued input.
pub type Pending = oneshot::Receiver<Result<Output, InferError>>;

/// What handlers send the model thread.
enum Message {
    /// The inputs of one request, queued at the back together.
    Request(Vec<Job>),
    /// A health probe, queued at the front: it waits for the batch running now, not for the
    /// whole queue.
    Probe(Job),
}

struct Job {
    input: Input,
    top_k: usize,
    enqueued: Instant,
    reply: Reply,
}

impl Job {
    fn new(input: Input, top_k: usize) -> (Job, Pending) {
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            input,
            top_k,
            enqueued: Instant::now(),
            reply,
        };
        (job, receiver)
    }
}

/// When a forward pass last succeeded, and how long it took.
type LastSuccess = Arc<Mutex<Option<(Instant, Duration)>>>;

/// A handle on the model thread: submit inputs, ask when it last succeeded. Cheap to clone.
#[derive(Clone)]
pub struct Infer {
    sender: Sender<Message>,
    last_success: LastSuccess,
    metrics: Metrics,
    drop_pieces: Arc<AtomicBool>,
}

impl Infer {
    /// Starts the model thread. It runs until every handle is dropped and its queue is empty.
    pub fn start(
        task: Arc<Task>,
        limits: BatchLimits,
        metrics: Metrics,
    ) -> Result<(Infer, JoinHandle<()>), ServeError> {
        let (sender, receiver) = mpsc::channel();
        let last_success = Arc::new(Mutex::new(None));
        let drop_pieces = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            task,
            limits,
            metrics: metrics.clone(),
            last_success: last_success.clone(),
            drop_pieces: drop_pieces.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("perceiver-model".into())
            .spawn(move || worker.run(receiver))
            .map_err(ServeError::ModelThread)?;
        Ok((
            Infer {
                sender,
                last_success,
                metrics,
                drop_pieces,
            },
            handle,
        ))
    }

    /// Queues the inputs of one request (each already checked: [`FillMask::prepare`],
    /// [`Classifier::tokenize`], [`Classifier::prepare_image`], [`OpticalFlow::grid`]) together,
    /// and returns where each answer will arrive, with at most `top_k` candidates per mask or
    /// labels per input.
    /// Queuing happens now, not when a receiver is first polled, and the inputs reach the model
    /// thread at once, so they share batches.
    pub fn submit(&self, inputs: Vec<Input>, top_k: usize) -> Result<Vec<Pending>, InferError> {
        let (jobs, receivers): (Vec<Job>, Vec<Pending>) =
            inputs.into_iter().map(|input| Job::new(input, top_k)).unzip();
        let count = jobs.len() as i64;
        // Counted before sending: the model thread may take them off the gauge at once.
        self.metrics.queue_depth.add(count);
        if self.sender.send(Message::Request(jobs)).is_err() {
            self.metrics.queue_depth.sub(count);
            return Err(InferError::Stopped);
        }
        Ok(receivers)
    }

    /// Queues a health probe ahead of every waiting input: it runs in the next batch.
    pub fn probe(&self, input: Input) -> Result<Pending, InferError> {
        let (job, receiver) = Job::new(input, 1);
        // Counted before sending: the model thread may take it off the gauge at once.
        self.metrics.queue_depth.inc();
        if self.sender.send(Message::Probe(job)).is_err() {
            self.metrics.queue_depth.dec();
            return Err(InferError::Stopped);
        }
        Ok(receiver)
    }

    /// A flag that, once set, has the model thread answer the flow tiles and clip parts it has
    /// not started [`InferError::Stopped`] instead of running them (a shutdown's deadline sets
    /// it: a large frame's tiles, or a few clips, could otherwise keep a stopping service busy
    /// for many minutes).
    pub fn piece_stop(&self) -> Arc<AtomicBool> {
        self.drop_pieces.clone()
    }

    /// Whether a forward pass succeeded within the last `window`, or within `passes` times
    /// that pass's own time if longer: where a pass takes seconds (a flow tile), a probe's own
    /// pass would otherwise keep the model busy whenever it is probed.
    pub fn succeeded_within(&self, window: Duration, passes: u32) -> bool {
        let last = *self.last_success.lock().unwrap_or_else(|e| e.into_inner());
        last.is_some_and(|(at, took)| at.elapsed() <= window.max(took.saturating_mul(passes)))
    }
}

struct Worker {
    task: Arc<Task>,
    limits: BatchLimits,
    metrics: Metrics,
    last_success: LastSuccess,
    drop_pieces: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, receiver: Receiver<Message>) {
        let mut pending = VecDeque::new();
        let mut open = true;
        // Inputs the next batch may wait for: those queued when the last pass ended plus those
        // it answered.
        let mut expected = 1;
        while open || !pending.is_empty() {
            if pending.is_empty() {
                match receiver.recv() {
                    Ok(message) => queue(&mut pending, message),
                    Err(_) => break,
                }
            }
            open &= drain(&receiver, &mut pending);
            if open {
                open = gather(&receiver, &mut pending, expected, self.limits);
            }
            if self.drop_pieces.load(Ordering::SeqCst) {
                stop_pieces(&mut pending, &self.metrics);
            }
            let batch = next_batch(&mut pending, self.limits, &self.metrics);
            if !batch.is_empty() {
                let answered = batch.len();
                let piece_of = batch[0].input.piece_of();
                let failure = self.run_batch(batch);
                // The rest of a failed piece's request would be computed for nothing (a clip's
                // chunks after a failed encoding cannot run at all): it fails with it, now.
                if let (Some(request), Some(reason)) = (piece_of, failure) {
                    fail_pieces(&mut pending, request, &reason, &self.metrics);
                }
                open &= drain(&receiver, &mut pending);
                expected = (pending.len() + answered).min(self.limits.max_batch_requests);
            }
        }
    }

    /// Runs one forward pass and answers its inputs; why it failed, if it did.
    fn run_batch(&self, batch: Vec<Job>) -> Option<String> {
        let started = Instant::now();
        for job in &batch {
            self.metrics
                .queue_duration
                .observe(started.duration_since(job.enqueued).as_secs_f64());
        }
        self.metrics.batch_size.observe(batch.len() as f64);
        // Images and pieces count no tokens: their batches are measured in inputs alone.
        if batch[0].input.is_text() {
            let tokens: usize = batch.iter().map(|j| j.input.tokens()).sum();
            self.metrics.batch_tokens.observe(tokens as f64);
        }

        let top_k = batch.iter().map(|j| j.top_k).max().unwrap_or(1);
        let result = {
            let inputs: Vec<&Input> = batch.iter().map(|j| &j.input).collect();
            catch_unwind(AssertUnwindSafe(|| self.task.run(&inputs, top_k)))
        };
        self.metrics
            .inference_duration
            .observe(started.elapsed().as_secs_f64());

        let outputs = match result {
            Ok(Ok(outputs)) if outputs.len() == batch.len() => outputs,
            Ok(Ok(outputs)) => {
                let reason = format!("{} answers for {} inputs", outputs.len(), batch.len());
                return Some(fail(batch, reason));
            }
            Ok(Err(e)) => return Some(fail(batch, e)),
            Err(panic) => {
                return Some(fail(
                    batch,
                    format!("the forward pass panicked: {}", panic_message(&*panic)),
                ))
            }
        };
        *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), started.elapsed()));
        for (job, raw) in batch.into_iter().zip(outputs) {
            let answer = match (raw, job.input) {
                (Raw::Masks(mut output), Input::Masked(input)) => {
                    for mask in &mut output.masks {
                        mask.candidates.truncate(job.top_k);
                    }
                    Ok(Output::Filled(Answer { input, output }))
                }
                (Raw::Labels(mut labels), _) => {
                    labels.truncate(job.top_k);
                    Ok(Output::Labels(labels))
                }
                (Raw::Flow(flow), _) => Ok(Output::Flow(flow)),
                (Raw::Decoded(decoded), _) => Ok(Output::Decoded(decoded)),
                (Raw::Masks(_), _) => Err(InferError::Failed("candidates for an input without masks".into())),
            };
            // A client that left meanwhile simply gets nothing.
            let _ = job.reply.send(answer);
        }
        None
    }
}

/// Moves everything sent so far into `pending`; false once every sender is gone.
fn drain(receiver: &Receiver<Message>, pending: &mut VecDeque<Job>) -> bool {
    loop {
        match receiver.try_recv() {
            Ok(message) => queue(pending, message),
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
}

/// Waits, at most `limits.max_wait`, until `expected` inputs are pending or they fill the
/// token budget, moving arrivals into `pending`; false once every sender is gone.
fn gather(
    receiver: &Receiver<Message>,
    pending: &mut VecDeque<Job>,
    expected: usize,
    limits: BatchLimits,
) -> bool {
    let deadline = Instant::now() + limits.max_wait;
    // A piece of a longer request runs alone: nothing to wait for.
    let full = |pending: &VecDeque<Job>| {
        pending.len() >= expected.min(limits.max_batch_requests)
            || pending.iter().map(|j| j.input.tokens()).sum::<usize>() >= limits.max_batch_tokens
            || pending.iter().any(|j| j.input.piece_of().is_some())
    };
    while !full(pending) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match receiver.recv_timeout(left) {
            Ok(message) => queue(pending, message),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
    true
}

fn queue(pending: &mut VecDeque<Job>, message: Message) {
    match message {
        Message::Request(jobs) => pending.extend(jobs),
        Message::Probe(job) => pending.push_front(job),
    }
}

/// Answers the pieces of longer requests (flow tiles, clip parts) in `pending`
/// [`InferError::Stopped`], keeping the other inputs.
fn stop_pieces(pending: &mut VecDeque<Job>, metrics: &Metrics) {
    answer_pieces(pending, |_| true, &InferError::Stopped, metrics);
}

/// Answers the pieces in `pending` whose request `which` picks with `error`, keeping the other
/// inputs.
fn answer_pieces(
    pending: &mut VecDeque<Job>,
    which: impl Fn(*const ()) -> bool,
    error: &InferError,
    metrics: &Metrics,
) {
    let mut kept = VecDeque::with_capacity(pending.len());
    for job in pending.drain(..) {
        if job.input.piece_of().is_some_and(&which) {
            metrics.queue_depth.dec();
            let _ = job.reply.send(Err(error.clone()));
        } else {
            kept.push_back(job);
        }
    }
    *pending = kept;
}

/// Takes the next batch off the front of `pending`: oldest first, skipping inputs whose client
/// is gone, until the next input would exceed a limit or is of another kind. The first live
/// input always fits (the token budget is at least the model's positions). A piece of a longer
/// request (a flow tile, a clip part) runs alone: it is a large pass already (the released flow
/// model's tile has 182,528 input rows), and a batch of them would keep a health probe waiting
/// for all of them. The pieces of its request that follow it then go to the back of the queue,
/// in their order, so that requests take turns.
fn next_batch(pending: &mut VecDeque<Job>, limits: BatchLimits, metrics: &Metrics) -> Vec<Job> {
    let mut batch: Vec<Job> = Vec::new();
    let mut tokens = 0;
    while let Some(job) = pending.front() {
        if departed(job, metrics) {
            pending.pop_front();
            continue;
        }
        let len = job.input.tokens();
        if let Some(first) = batch.first() {
            let other_kind = std::mem::discriminant(&first.input) != std::mem::discriminant(&job.input);
            if other_kind || tokens + len > limits.max_batch_tokens {
                break;
            }
        }
        tokens += len;
        batch.extend(pending.pop_front());
        metrics.queue_depth.dec();
        if let Some(request) = batch[0].input.piece_of() {
            // Pieces of departed clients anywhere in the queue go now, not when they reach its
            // front: they hold their inputs and, through them, the budget others wait for.
            pending.retain(|j| !departed(j, metrics));
            let rest = pending
                .iter()
                .take_while(|j| j.input.piece_of() == Some(request))
                .count();
            if rest < pending.len() {
                pending.rotate_left(rest);
            }
            break;
        }
        if batch.len() >= limits.max_batch_requests {
            break;
        }
    }
    batch
}

/// Whether `job`'s client has gone; if so it is counted as dropped and off the queue's depth
/// (the caller takes it off the queue).
fn departed(job: &Job, metrics: &Metrics) -> bool {
    let gone = job.reply.is_closed();
    if gone {
        metrics.queue_depth.dec();
        metrics.inputs_dropped.inc();
    }
    gone
}

/// Answers every input of `batch` with `reason`; `reason` back.
fn fail(batch: Vec<Job>, reason: String) -> String {
    tracing::error!("batch of {} failed: {reason}", batch.len());
    for job in batch {
        let _ = job.reply.send(Err(InferError::Failed(reason.clone())));
    }
    reason
}

/// Answers the pieces of `request` left in `pending` with `reason` (one of its pieces failed
/// with it), keeping every other input.
fn fail_pieces(pending: &mut VecDeque<Job>, request: *const (), reason: &str, metrics: &Metrics) {
    let error = InferError::Failed(reason.to_owned());
    answer_pieces(pending, |piece_of| piece_of == request, &error, metrics);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(len: usize) -> (Job, Pending) {
        let input = MaskedText {
            ids: vec![3; len],
            mask_positions: vec![0],
        };
        Job::new(Input::Masked(input), 1)
    }

    fn lengths(batch: &[Job]) -> Vec<usize> {
        batch.iter().map(|j| j.input.tokens()).collect()
    }

    #[test]
    fn batches_respect_the_token_budget_and_the_request_cap() {
        let metrics = Metrics::new();
        let mut receivers = Vec::new();
        let mut pending: VecDeque<Job> = [10, 10, 50, 30, 20, 5, 5, 5, 5]
            .into_iter()
            .map(|len| {
                let (job, rx) = job(len);
                receivers.push(rx);
                job
            })
            .collect();
        metrics.queue_depth.set(pending.len() as i64);
        let limits = BatchLimits {
            max_batch_tokens: 64,
            max_batch_requests: 3,
            max_wait: Duration::ZERO,
        };
        // 10 + 10 fit; adding 50 would make 70 > 64.
        assert_eq!(lengths(&next_batch(&mut pending, limits, &metrics)), [10, 10]);
        // 50 alone (+ 30 = 80); then 30 + 20 + 5 = 55 (unpadded; padded it would be 90), a fourth
        // would hit the request cap.
        assert_eq!(lengths(&next_batch(&mut pending, limits, &metrics)), [50]);
        assert_eq!(lengths(&next_batch(&mut pending, limits, &metrics)), [30, 20, 5]);
        // The request cap.
        assert_eq!(lengths(&next_batch(&mut pending, limits, &metrics)), [5, 5, 5]);
        assert_eq!(metrics.queue_depth.get(), 0);
        assert!(next_batch(&mut pending, limits, &metrics).is_empty());
    }

    #[test]
    fn a_flow_tile_runs_alone_and_its_frames_go_with_the_last_tile() {
        let metrics = Metrics::new();
        let frames = grey_frames();
        let (tiles, mut receivers) = tiles(&frames, 3);
        let (texts, _rt): (Vec<Job>, Vec<Pending>) = (0..2).map(|_| job(4)).unzip();
        let mut pending: VecDeque<Job> = tiles.into_iter().chain(texts).collect();
        metrics.queue_depth.set(5);
        let limits = BatchLimits {
            max_batch_tokens: 100,
            max_batch_requests: 10,
            max_wait: Duration::ZERO,
        };
        // The client of the second tile left: it is dropped, never run.
        drop(receivers.remove(1));
        let mut runs = Vec::new();
        while !pending.is_empty() {
            let batch = next_batch(&mut pending, limits, &metrics);
            // The departed tile goes with the first tile taken, not when it reaches the front.
            assert_eq!(metrics.inputs_dropped.get(), 1);
            runs.push(match &batch[0].input {
                Input::FlowTile { tile, .. } => format!("tile {}", tile.left),
                _ => format!("{} texts", batch.len()),
            });
        }
        // Each tile alone; the rest of its request waits behind what was queued after it.
        assert_eq!(runs, ["tile 0", "2 texts", "tile 2"]);
        // Only the test's handle on the frames is left once the tiles are gone.
        assert_eq!(Arc::strong_count(&frames), 1);
        assert_eq!(metrics.queue_depth.get(), 0);
        assert_eq!(metrics.inputs_dropped.get(), 1);
    }

    /// Tiles of `frames`, `count` of them, and their receivers.
    fn tiles(frames: &Arc<Frames>, count: usize) -> (Vec<Job>, Vec<Pending>) {
        (0..count)
            .map(|left| {
                let tile = Tile { top: 0, left };
                Job::new(
                    Input::FlowTile {
                        frames: frames.clone(),
                        tile,
                    },
                    1,
                )
            })
            .unzip()
    }

    fn grey_frames() -> Arc<Frames> {
        let zeros = || Pixels::new(4, 4, vec![0.0; 48]).unwrap();
        Arc::new(Frames {
            pair: FramePair::new(zeros(), zeros()).unwrap(),
            budget: None,
        })
    }

    #[test]
    fn flow_requests_take_turns_and_stop_at_the_deadline() {
        let metrics = Metrics::new();
        let (a, b) = (grey_frames(), grey_frames());
        let (mut pending, mut receivers) = (VecDeque::new(), Vec::new());
        for (frames, count) in [(&a, 3), (&b, 2)] {
            let (jobs, rx) = tiles(frames, count);
            queue(&mut pending, Message::Request(jobs));
            receivers.extend(rx);
        }
        metrics.queue_depth.set(5);
        let limits = BatchLimits {
            max_batch_tokens: 100,
            max_batch_requests: 10,
            max_wait: Duration::ZERO,
        };
        let mut order = Vec::new();
        for _ in 0..3 {
            let batch = next_batch(&mut pending, limits, &metrics);
            let Input::FlowTile { frames, tile } = &batch[0].input else {
                panic!("a tile")
            };
            order.push((if Arc::ptr_eq(frames, &a) { 'a' } else { 'b' }, tile.left));
        }
        assert_eq!(order, [('a', 0), ('b', 0), ('a', 1)]);
        // The deadline: the two tiles left are answered, not run.
        stop_pieces(&mut pending, &metrics);
        assert!(pending.is_empty());
        assert_eq!(metrics.queue_depth.get(), 0);
        let stopped: Vec<_> = receivers
            .into_iter()
            .filter_map(|mut rx| rx.try_recv().ok())
            .collect();
        assert_eq!(stopped.len(), 2);
        assert!(stopped.iter().all(|r| matches!(r, Err(InferError::Stopped))));
    }

    /// A clip's parts: its encoding, then `decodes` chunks (the queries do not matter here).
    fn clip_parts(clip: &Arc<Clip>, decodes: usize) -> (Vec<Job>, Vec<Pending>) {
        let part = |i: usize| match i {
            0 => ClipPart::Encode(ClipQueries::Chunk(0)),
            i => ClipPart::Decode(ClipQueries::Chunk(i)),
        };
        (0..=decodes)
            .map(|i| {
                Job::new(
                    Input::ClipPart {
                        clip: clip.clone(),
                        part: part(i),
                    },
                    1,
                )
            })
            .unzip()
    }

    /// Clip parts are pieces as flow tiles are: each runs alone, requests take turns with each
    /// one's parts in their order (its encoding first), a departed client's parts are dropped
    /// wherever they sit, and a deadline stops those not started.
    #[test]
    fn clip_parts_take_turns_in_order_and_stop_at_the_deadline() {
        let metrics = Metrics::new();
        let clip = || Arc::new(Clip::new(Vec::new(), Vec::new(), None));
        let (a, b, c) = (clip(), clip(), clip());
        let (mut pending, mut receivers) = (VecDeque::new(), Vec::new());
        for (clip, decodes) in [(&a, 3), (&b, 2), (&c, 2)] {
            let (jobs, rx) = clip_parts(clip, decodes);
            queue(&mut pending, Message::Request(jobs));
            receivers.push(rx);
        }
        metrics.queue_depth.set(pending.len() as i64);
        // The client of c leaves before any of its parts runs.
        let gone = receivers.pop().unwrap();
        drop(gone);
        let limits = BatchLimits {
            max_batch_tokens: 100,
            max_batch_requests: 10,
            max_wait: Duration::ZERO,
        };
        let mut order = Vec::new();
        for _ in 0..5 {
            let batch = next_batch(&mut pending, limits, &metrics);
            assert_eq!(batch.len(), 1, "a part runs alone");
            let Input::ClipPart { clip, part } = &batch[0].input else {
                panic!("a clip part")
            };
            let name = if Arc::ptr_eq(clip, &a) { 'a' } else { 'b' };
            order.push((name, matches!(part, ClipPart::Encode(_))));
        }
        let (encode, decode) = (true, false);
        assert_eq!(
            order,
            [
                ('a', encode),
                ('b', encode),
                ('a', decode),
                ('b', decode),
                ('a', decode)
            ]
        );
        assert_eq!(metrics.inputs_dropped.get(), 3, "c's three parts");
        // The deadline: the parts left (a's last decode, b's last) are answered, not run.
        stop_pieces(&mut pending, &metrics);
        assert!(pending.is_empty());
        assert_eq!(metrics.queue_depth.get(), 0);
        let stopped: Vec<_> = receivers
            .into_iter()
            .flatten()
            .filter_map(|mut rx| rx.try_recv().ok())
            .collect();
        assert_eq!(stopped.len(), 2);
        assert!(stopped.iter().all(|r| matches!(r, Err(InferError::Stopped))));
    }

    /// A failed piece's request is failed whole: its other parts are answered with the reason,
    /// not run; other requests' parts stay queued.
    #[test]
    fn a_failed_piece_fails_the_rest_of_its_request() {
        let metrics = Metrics::new();
        let clip = || Arc::new(Clip::new(Vec::new(), Vec::new(), None));
        let (a, b) = (clip(), clip());
        let (mut pending, mut receivers) = (VecDeque::new(), Vec::new());
        for (clip, decodes) in [(&a, 3), (&b, 2)] {
            let (jobs, rx) = clip_parts(clip, decodes);
            queue(&mut pending, Message::Request(jobs));
            receivers.push(rx);
        }
        metrics.queue_depth.set(pending.len() as i64);
        fail_pieces(&mut pending, Arc::as_ptr(&a).cast(), "no latents", &metrics);
        assert_eq!(pending.len(), 3);
        assert!(pending
            .iter()
            .all(|j| matches!(&j.input, Input::ClipPart { clip, .. } if Arc::ptr_eq(clip, &b))));
        assert_eq!(metrics.queue_depth.get(), 3);
        let failed: Vec<_> = receivers[0].iter_mut().map(|rx| rx.try_recv().ok()).collect();
        assert_eq!(failed.len(), 4);
        assert!(failed
            .iter()
            .all(|r| matches!(r, Some(Err(InferError::Failed(why))) if why == "no latents")));
        assert!(receivers[1].iter_mut().all(|rx| rx.try_recv().is_err()));
    }

    #[test]
    fn a_long_pass_vouches_for_longer() {
        let (sender, _receiver) = mpsc::channel();
        let infer = Infer {
            sender,
            last_success: Arc::new(Mutex::new(None)),
            metrics: Metrics::new(),
            drop_pieces: Arc::new(AtomicBool::new(false)),
        };
        let window = Duration::from_secs(5);
        assert!(!infer.succeeded_within(window, 10));
        // A host up for less than the ages below has no such past: nothing to check there.
        let Some(ago) = Instant::now()
            .checked_sub(Duration::from_secs(30))
            .map(|_| |s: u64| Instant::now() - Duration::from_secs(s))
        else {
            return;
        };
        *infer.last_success.lock().unwrap() = Some((ago(4), Duration::from_millis(100)));
        assert!(infer.succeeded_within(window, 10));
        *infer.last_success.lock().unwrap() = Some((ago(6), Duration::from_millis(100)));
        assert!(!infer.succeeded_within(window, 10));
        // A pass of 2 s vouches for 20 s.
        *infer.last_success.lock().unwrap() = Some((ago(15), Duration::from_secs(2)));
        assert!(infer.succeeded_within(window, 10));
        *infer.last_success.lock().unwrap() = Some((ago(21), Duration::from_secs(2)));
        assert!(!infer.succeeded_within(window, 10));
    }

    #[test]
    fn probes_go_first_and_requests_stay_together() {
        let mut pending = VecDeque::new();
        let (a, _ra) = job(1);
        let (b, _rb) = job(2);
        let (c, _rc) = job(3);
        let (probe, _rp) = job(9);
        queue(&mut pending, Message::Request(vec![a, b]));
        queue(&mut pending, Message::Request(vec![c]));
        queue(&mut pending, Message::Probe(probe));
        let order: Vec<usize> = pending.iter().map(|j| j.input.tokens()).collect();
        assert_eq!(order, [9, 1, 2, 3]);
    }

    #[test]
    fn inputs_of_departed_clients_are_skipped_before_running() {
        let metrics = Metrics::new();
        let (a, rx_a) = job(4);
        let (b, rx_b) = job(4);
        let (c, rx_c) = job(4);
        let mut pending = VecDeque::from([a, b, c]);
        metrics.queue_depth.set(3);
        drop(rx_a);
        drop(rx_c);
        let limits = BatchLimits {
            max_batch_tokens: 100,
            max_batch_requests: 10,
            max_wait: Duration::ZERO,
        };
        let batch = next_batch(&mut pending, limits, &metrics);
        assert_eq!(batch.len(), 1);
        assert!(!batch[0].reply.is_closed());
        assert_eq!(metrics.inputs_dropped.get(), 2);
        assert_eq!(metrics.queue_depth.get(), 0);
        drop(rx_b);
    }

    #[test]
    fn images_count_no_tokens_and_kinds_do_not_mix() {
        let metrics = Metrics::new();
        let image = || Job::new(Input::Pixels(Pixels::new(2, 2, vec![0.0; 12]).unwrap()), 1);
        let text = || Job::new(Input::Tokens(vec![4; 10]), 1);
        let (jobs, _receivers): (Vec<Job>, Vec<Pending>) =
            [image(), image(), image(), text(), text(), image()]
                .into_iter()
                .unzip();
        let mut pending = VecDeque::from(jobs);
        metrics.queue_depth.set(pending.len() as i64);
        let limits = BatchLimits {
            max_batch_tokens: 10,
            max_batch_requests: 8,
            max_wait: Duration::ZERO,
        };
        let kinds =
            |batch: &[Job]| -> Vec<&'static str> { batch.iter().map(|j| j.input.describe()).collect() };
        // Three images fit a budget of 10 tokens; the text that follows starts the next batch.
        assert_eq!(
            kinds(&next_batch(&mut pending, limits, &metrics)),
            ["an image"; 3]
        );
        // Two texts of 10 tokens exceed the budget.
        assert_eq!(
            kinds(&next_batch(&mut pending, limits, &metrics)),
            ["a text to classify"]
        );
        assert_eq!(
            kinds(&next_batch(&mut pending, limits, &metrics)),
            ["a text to classify"]
        );
        assert_eq!(kinds(&next_batch(&mut pending, limits, &metrics)), ["an image"]);
    }

    fn request(len: usize) -> (Message, Pending) {
        let (job, receiver) = job(len);
        (Message::Request(vec![job]), receiver)
    }

    fn waiting(max_wait: Duration) -> BatchLimits {
        BatchLimits {
            max_batch_tokens: 1000,
            max_batch_requests: 8,
            max_wait,
        }
    }

    #[test]
    fn a_batch_waits_for_the_expected_inputs_and_no_longer() {
        let (sender, receiver) = mpsc::channel();
        let mut pending = VecDeque::new();
        let (first, _r1) = request(4);
        queue(&mut pending, first);
        // Three inputs expected, two more arrive a little later: the wait ends when they are
        // in, long before its limit.
        let late = std::thread::spawn(move || {
            let mut receivers = Vec::new();
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(20));
                let (message, rx) = request(4);
                sender.send(message).unwrap();
                receivers.push(rx);
            }
            (sender, receivers)
        });
        let started = Instant::now();
        assert!(gather(
            &receiver,
            &mut pending,
            3,
            waiting(Duration::from_secs(20))
        ));
        assert_eq!(pending.len(), 3);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let (sender, _receivers) = late.join().unwrap();

        // Nothing more comes: the wait ends at its limit.
        let started = Instant::now();
        assert!(gather(
            &receiver,
            &mut pending,
            5,
            waiting(Duration::from_millis(50))
        ));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(pending.len(), 3);

        // As many waiting as expected, or the request cap reached: no wait at all, even with
        // an input on its way.
        let (message, _r) = request(4);
        sender.send(message).unwrap();
        assert!(gather(
            &receiver,
            &mut pending,
            3,
            waiting(Duration::from_secs(20))
        ));
        assert_eq!(pending.len(), 3);
        let capped = BatchLimits {
            max_batch_requests: 3,
            ..waiting(Duration::from_secs(20))
        };
        assert!(gather(&receiver, &mut pending, 30, capped));
        assert_eq!(pending.len(), 3);
        let budget_full = BatchLimits {
            max_batch_tokens: 12,
            ..waiting(Duration::from_secs(20))
        };
        assert!(gather(&receiver, &mut pending, 30, budget_full));
        assert_eq!(pending.len(), 3);

        // The senders gone: the wait ends and says so.
        drop(sender);
        let mut empty = VecDeque::new();
        assert!(!gather(
            &receiver,
            &mut empty,
            2,
            waiting(Duration::from_secs(20))
        ));
    }
}
