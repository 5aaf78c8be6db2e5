//! The JSON of the HTTP API: the Hugging Face Inference API's fill-mask, text-classification
//! and image-classification shapes, optical flow's (which the Inference API has no shape for),
//! and `/info`.
//!
//! # Classification answers
//!
//! Per input, the `top_k` best labels, best first, each `{"label", "score"}` (softmax over the
//! labels; a sigmoid for a one-label model), as transformers' `text-classification` and
//! `image-classification` pipelines give them: one list for one input, a list of such lists
//! for a list of inputs. `top_k` defaults to 5 for images (the image pipeline's default) and to
//! every label for texts (the Inference API's text-classification answer); a larger `top_k`
//! gives every label, as the pipelines do.
//!
//! # Fill-mask answers, as transformers' `FillMaskPipeline` gives them
//!
//! Per masked position, the `top_k` candidates best first, each
//! `{"score", "token", "token_str", "sequence"}`; one mask gives a flat list, several a list of
//! such lists in position order. A candidate's `sequence` is the input with that candidate at
//! that position and every other position as it was, `[PAD]` ids dropped, decoded:
//!
//! * one mask: special ids dropped (`decode(skip_special_tokens=True)`);
//! * several masks: special ids kept by name, so the other masks still read `[MASK]` (and,
//!   with `add_special_tokens`, the text reads `[CLS]…[SEP]`), as the pipeline does
//!   (`decode(skip_special_tokens=False)`, "the other \[MASK\] would be removed otherwise").
//!
//! The pipeline always adds `[CLS]`/`[SEP]`; this service, like the CLI and DeepMind's
//! notebook, does not unless `parameters.add_special_tokens` is true. With it, answers equal
//! the pipeline's (checked against transformers' output in the tests).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::queue::Answer;

/// `POST /fill-mask` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"inputs": "This is an incomplete sentence where some words are[MASK:9]", "parameters": {"top_k": 3}}))]
pub struct FillMaskRequest {
    /// One text or a list of texts; masked bytes are written `[MASK]` (one byte) or `[MASK:n]`
    /// (n bytes).
    pub inputs: Inputs,
    /// Optional settings.
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// One input or several: texts, or base64 images for an image classifier.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum Inputs {
    /// One input, answered with one answer ([`TextAnswer`], or a list of labels).
    Single(String),
    /// A list of inputs, answered with a list in the same order.
    Batch(Vec<String>),
}

/// `parameters` of a fill-mask request.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    /// Candidates per masked position (default 5, at most the vocabulary's 262).
    #[schema(minimum = 1, maximum = 262, example = 5)]
    pub top_k: Option<usize>,
    /// Wrap each text in `[CLS] … [SEP]` as transformers' tokenizer and pipeline do (default
    /// false, as DeepMind's notebook and `perceiver fill-mask`).
    pub add_special_tokens: Option<bool>,
}

/// `POST /classify` body, when it is JSON (an image model also takes the image's bytes as the
/// body).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"inputs": "What a lovely day", "parameters": {"top_k": 2}}))]
pub struct ClassifyRequest {
    /// A text classifier: one text or a list of texts. An image classifier: one image file's
    /// bytes in base64 (a `data:image/…;base64,` prefix is allowed), or a list of them.
    pub inputs: Inputs,
    /// Optional settings.
    #[serde(default)]
    pub parameters: Option<ClassifyParameters>,
}

/// `parameters` of a classification request.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyParameters {
    /// Labels per input, best first (default: 5 for images, every label for texts; more than
    /// the model's labels gives them all). A raw image body takes it as the query `?top_k=`.
    #[schema(minimum = 1, example = 5)]
    pub top_k: Option<usize>,
}

/// One label of a classified input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelPrediction {
    /// The label's name (`id2label` of the model's config.json).
    pub label: String,
    /// Its probability.
    pub score: f32,
}

/// `POST /classify` answer: one list of labels for one input, a list of lists for a list.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ClassifyResponse {
    /// The labels of a single input (a string, or an image body), best first.
    Single(Vec<LabelPrediction>),
    /// The labels of each input of a list, in its order.
    Batch(Vec<Vec<LabelPrediction>>),
}

/// `POST /flow` body, when it is JSON (a multipart form with the files `frame1` and `frame2`
/// also does).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRequest {
    /// The two frames.
    pub inputs: FlowFrames,
}

/// The two frames of a flow request, each an image file's bytes in base64 (a
/// `data:image/…;base64,` prefix is allowed).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowFrames {
    /// The earlier frame: flow is the motion from it to `frame2`.
    pub frame1: String,
    /// The later frame, of the same size.
    pub frame2: String,
}

/// `POST /flow` answer as JSON (`Accept: image/png` gives the picture instead, and
/// `Accept: application/octet-stream` a Middlebury `.flo` file).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FlowResponse {
    /// Rows of the frames and of the flow.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// The mean flow magnitude, in pixels.
    pub mean_magnitude: f32,
    /// The largest flow magnitude, in pixels.
    pub max_magnitude: f32,
    /// Tiles run, one forward pass each (overlapping windows of the model's tile size).
    pub tiles: usize,
    /// The flow `[u, v]` of each pixel, in pixels (u to the right, v down): `height` rows of
    /// `width` pairs.
    #[schema(value_type = Vec<Vec<Vec<f32>>>)]
    pub flow: FlowRows,
}

/// `POST /autoencode` body, when it is JSON (a multipart form with the files `video` or
/// `frame`…, and `audio`, also does). The frames come either as one `.y4m` video or as image
/// files in order.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoencodeRequest {
    /// The clip.
    pub inputs: ClipInputs,
    /// Optional settings.
    #[serde(default)]
    pub parameters: AutoencodeParameters,
}

/// A clip's files, each in base64 (a `data:…;base64,` prefix is allowed): `video` or
/// `frames`, and `audio`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipInputs {
    /// The frames as one `.y4m` video (its first frames, at 25 a second).
    #[serde(default)]
    pub video: Option<String>,
    /// The frames as PNG or JPEG files, in order: exactly the model's number.
    #[serde(default)]
    pub frames: Option<Vec<String>>,
    /// The frames' audio: a WAV file at the model's rate (its first channel is used).
    pub audio: String,
}

/// `POST /autoencode` settings (a multipart form takes them as the query's `?top_k=` and
/// `?reconstruct=`).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoencodeParameters {
    /// Labels reported, best first (default 5).
    #[schema(minimum = 1, example = 5)]
    pub top_k: Option<usize>,
    /// Whether to reconstruct the frames and audio (default true); false names the labels
    /// only, which decodes one query instead of every pixel and audio sample.
    pub reconstruct: Option<bool>,
}

/// `POST /autoencode` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AutoencodeResponse {
    /// The best labels, best first.
    pub labels: Vec<LabelPrediction>,
    /// The reconstructed frames as PNG files in base64, in order (absent when only labels
    /// were asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<Vec<String>>,
    /// The reconstructed audio as a mono 32-bit float WAV file in base64 (absent when only
    /// labels were asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    /// The audio's sample rate.
    pub sample_rate: u32,
    /// Forward passes of the decoder: the chunks the queries were decoded in (1 when only
    /// labels were asked).
    pub chunks: usize,
}

/// What a multimodal autoencoder takes (`GET /info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClipInfo {
    /// Frames of a clip (`num_frames`).
    pub frames: usize,
    /// Rows of each frame.
    pub height: usize,
    /// Columns of each frame.
    pub width: usize,
    /// The audio's sample rate: `audio_samples_per_frame` × 25 frames a second.
    pub sample_rate: u32,
    /// Audio samples of a clip.
    pub audio_samples: usize,
}

impl ClipInfo {
    /// The clip `autoencoder` takes.
    pub fn of(autoencoder: &perceiver::Autoencoder) -> Self {
        let spec = autoencoder.spec();
        let (height, width) = spec.frame_size();
        Self {
            frames: spec.num_frames,
            height,
            width,
            sample_rate: autoencoder.sample_rate(),
            audio_samples: spec.audio_samples(),
        }
    }
}

/// A flow field written as rows of `[u, v]` pairs.
#[derive(Debug, Clone)]
pub struct FlowRows(pub perceiver::FlowField);

impl Serialize for FlowRows {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        struct Row<'a>(&'a [f32]);
        impl Serialize for Row<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.chunks_exact(2))
            }
        }
        let field = &self.0;
        let mut rows = serializer.serialize_seq(Some(field.height()))?;
        for row in field.values().chunks_exact(field.width() * 2) {
            rows.serialize_element(&Row(row))?;
        }
        rows.end()
    }
}

/// One candidate for one masked position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// Softmax probability over the vocabulary.
    pub score: f32,
    /// Token id (byte + 6, or a special id).
    pub token: u32,
    /// The id decoded alone (a lone non-ASCII byte is U+FFFD).
    pub token_str: String,
    /// The text with this candidate in place (see the module docs for several masks).
    pub sequence: String,
}

/// The answer for one text: candidates for its one mask, or a list per mask.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TextAnswer {
    /// The text has one mask: its candidates, best first.
    OneMask(Vec<Prediction>),
    /// The text has several masks: one list of candidates per mask, in position order.
    SeveralMasks(Vec<Vec<Prediction>>),
}

/// `POST /fill-mask` answer: one [`TextAnswer`] for a string input, a list for a list input.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum FillMaskResponse {
    /// The answer to a string input.
    Single(TextAnswer),
    /// The answers to a list input, in its order.
    Batch(Vec<TextAnswer>),
}

impl TextAnswer {
    /// Formats a filled input as transformers' fill-mask pipeline does (module docs).
    pub fn from_answer(answer: &Answer) -> Self {
        let Answer { input, output } = answer;
        let mut rows: Vec<Vec<Prediction>> = output
            .masks
            .iter()
            .enumerate()
            .map(|(m, mask)| {
                mask.candidates
                    .iter()
                    .enumerate()
                    .map(|(c, candidate)| Prediction {
                        score: candidate.score,
                        token: candidate.token,
                        token_str: candidate.token_str.clone(),
                        // The answer's own masks and candidates, for its own input: always
                        // there.
                        sequence: output.candidate_sequence(input, m, c).unwrap_or_default(),
                    })
                    .collect()
            })
            .collect();
        match rows.pop() {
            Some(row) if rows.is_empty() => TextAnswer::OneMask(row),
            Some(row) => {
                rows.push(row);
                TextAnswer::SeveralMasks(rows)
            }
            None => TextAnswer::SeveralMasks(Vec::new()),
        }
    }
}

/// The limits a client must respect (`/info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Longest text in tokens (masks expanded, special tokens included): the model's positions
    /// (0 for an image model).
    pub max_input_length: usize,
    /// Most texts in one request.
    pub max_client_batch_size: usize,
    /// Most candidates one request may ask for: the sum over its texts of masks × top_k
    /// (classification: inputs × labels answered).
    pub max_predictions: usize,
    /// Largest request body in bytes.
    pub payload_limit: usize,
    /// Requests queued or running at once before 429.
    pub max_concurrent_requests: usize,
    /// Most tokens (the texts' lengths summed) in one forward pass (images count none).
    pub max_batch_tokens: usize,
    /// Most inputs (texts or images) in one forward pass.
    pub max_batch_requests: usize,
    /// Longest a batch is held back for more clients, in microseconds.
    pub max_batch_wait_us: u64,
    /// Largest image (width × height) a classifier or flow model takes.
    pub max_image_pixels: u64,
}

/// `GET /info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Info {
    /// The model as given to `--model` (a directory or a hub id).
    pub model_id: String,
    /// What the service does, as a Hugging Face pipeline name: `fill-mask` (`POST /fill-mask`),
    /// `text-classification` or `image-classification` (`POST /classify`); `optical-flow`
    /// (`POST /flow`); `multimodal-autoencoding` (`POST /autoencode`).
    #[schema(example = "fill-mask")]
    pub task: String,
    /// A classifier's or an autoencoder's labels, in id order (absent for other tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// An optical-flow model's tile, `[height, width]`: the least size of its frames, and the
    /// windows its flow is computed in (absent for other tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_size: Option<[usize; 2]>,
    /// A multimodal autoencoder's clip: what `POST /autoencode` takes (absent for other tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<ClipInfo>,
    /// Number type of the model's weight matrix products (`f32` or `bf16`, as `--precision`).
    #[schema(example = "f32")]
    pub precision: String,
    /// The model's `config.json` (transformers' `PerceiverConfig`).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// The model's parameter count.
    pub parameters: usize,
    /// The limits a client must respect.
    pub limits: Limits,
    /// Version of this service.
    pub version: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `"ok"` (failures answer 503 with an error body).
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use perceiver::{BytesTokenizer, Candidate, FillMaskOutput, MaskPrediction};

    fn answer(text: &str, masks: &[(usize, &[u32])]) -> Answer {
        let tokenizer = BytesTokenizer;
        let input = tokenizer.encode_masked(text, true).unwrap();
        let masks = masks
            .iter()
            .map(|&(position, tokens)| MaskPrediction {
                position,
                candidates: tokens
                    .iter()
                    .map(|&token| Candidate {
                        token,
                        token_str: tokenizer.token_str(token),
                        score: 0.5,
                    })
                    .collect(),
            })
            .collect();
        Answer {
            input,
            output: FillMaskOutput {
                sequence: String::new(),
                masks,
            },
        }
    }

    #[test]
    fn one_mask_is_a_flat_list_without_special_tokens() {
        let x = u32::from(b'x') + 6;
        let a = answer("a[MASK]c", &[(2, &[x])]);
        let TextAnswer::OneMask(row) = TextAnswer::from_answer(&a) else {
            panic!("one mask gives a flat list")
        };
        assert_eq!(row[0].sequence, "axc");
    }

    #[test]
    fn several_masks_keep_the_others_and_special_tokens() {
        let (x, y) = (u32::from(b'x') + 6, u32::from(b'y') + 6);
        let a = answer("[MASK]b[MASK]", &[(1, &[x, y]), (3, &[y])]);
        let TextAnswer::SeveralMasks(rows) = TextAnswer::from_answer(&a) else {
            panic!("several masks give a list of lists")
        };
        let sequences: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| r.iter().map(|p| p.sequence.as_str()).collect())
            .collect();
        assert_eq!(
            sequences,
            [
                vec!["[CLS]xb[MASK][SEP]", "[CLS]yb[MASK][SEP]"],
                vec!["[CLS][MASK]by[SEP]"]
            ]
        );
    }

    #[test]
    fn request_shapes() {
        let r: FillMaskRequest = serde_json::from_str(r#"{"inputs": "a[MASK]"}"#).unwrap();
        assert!(matches!(r.inputs, Inputs::Single(_)) && r.parameters.is_none());
        let r: FillMaskRequest =
            serde_json::from_str(r#"{"inputs": ["a[MASK]"], "parameters": {"top_k": 2}}"#).unwrap();
        assert!(matches!(r.inputs, Inputs::Batch(ref v) if v.len() == 1));
        assert_eq!(r.parameters.unwrap().top_k, Some(2));
        let err = serde_json::from_str::<FillMaskRequest>(r#"{"inputs": 3}"#).unwrap_err();
        assert!(err.to_string().contains("a string or a list of strings"), "{err}");
        assert!(serde_json::from_str::<FillMaskRequest>(r#"{"inputs": "x", "extra": 1}"#).is_err());
    }
}
