//! Media and message actions on the Bot API: one attachment with
//! `sendPhoto`/`sendVideo`/`sendAudio`/`sendVoice`/`sendAnimation`/
//! `sendSticker`/`sendDocument`, several of one family with
//! `sendMediaGroup` (10 at most per call), by URL (JSON) or by upload
//! (`multipart/form-data`); received media as attachment metadata; react,
//! edit and delete with `setMessageReaction`, `editMessageText` and
//! `deleteMessage`.

use serde_json::{json, Value};
use switchboard_sdk::{
    AttachmentKind, AttachmentSource, ChannelError, InboundAttachment, MessageAction,
    OutboundAttachment,
};

/// Longest caption Telegram takes.
pub const MAX_CAPTION_CHARS: usize = 1024;

/// The method for one attachment and the name of its file parameter.
pub fn single_method(kind: AttachmentKind) -> (&'static str, &'static str) {
    match kind {
        AttachmentKind::Image => ("sendPhoto", "photo"),
        AttachmentKind::Video => ("sendVideo", "video"),
        AttachmentKind::Audio => ("sendAudio", "audio"),
        AttachmentKind::Voice => ("sendVoice", "voice"),
        AttachmentKind::Animation => ("sendAnimation", "animation"),
        AttachmentKind::Sticker => ("sendSticker", "sticker"),
        AttachmentKind::Document | AttachmentKind::Other => ("sendDocument", "document"),
    }
}

/// The media-group family of a kind (groups may not mix families), and its
/// `InputMedia` type; `None` for kinds a group cannot hold.
fn group_family(kind: AttachmentKind) -> Option<(u8, &'static str)> {
    match kind {
        AttachmentKind::Image => Some((0, "photo")),
        AttachmentKind::Video => Some((0, "video")),
        AttachmentKind::Document | AttachmentKind::Other => Some((1, "document")),
        AttachmentKind::Audio => Some((2, "audio")),
        _ => None,
    }
}

/// One Bot API call to make: its method, its text parameters, and the
/// files it uploads (`(field, file name, MIME type, bytes)`).
pub struct Call {
    pub method: &'static str,
    pub params: Value,
    pub files: Vec<(String, String, String, Vec<u8>)>,
}

fn file_name(a: &OutboundAttachment, i: usize) -> String {
    a.file_name.clone().unwrap_or_else(|| format!("file{i}"))
}

fn mime(a: &OutboundAttachment) -> String {
    a.mime_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// The calls that send `attachments` to `base` (chat, thread, reply),
/// `caption` on the first: several attachments of one family go as media
/// groups of up to 10, the rest one by one.
pub fn calls(base: &Value, attachments: &[OutboundAttachment], caption: Option<&str>) -> Vec<Call> {
    let mut out = Vec::new();
    let mut caption = caption.filter(|c| !c.is_empty());
    let family = attachments
        .first()
        .and_then(|a| group_family(a.kind))
        .map(|f| f.0);
    let groupable = attachments.len() > 1
        && attachments
            .iter()
            .all(|a| group_family(a.kind).map(|f| f.0) == family);
    if groupable {
        for (chunk_no, chunk) in attachments.chunks(10).enumerate() {
            let mut media = Vec::new();
            let mut files = Vec::new();
            for (j, a) in chunk.iter().enumerate() {
                let i = chunk_no * 10 + j;
                let (_, ty) = group_family(a.kind).unwrap_or((1, "document"));
                let media_ref = match &a.source {
                    AttachmentSource::Url(u) => u.clone(),
                    AttachmentSource::Bytes(b) => {
                        let field = format!("file{i}");
                        files.push((field.clone(), file_name(a, i), mime(a), b.clone()));
                        format!("attach://{field}")
                    }
                };
                let mut m = json!({"type": ty, "media": media_ref});
                if let Some(c) = caption.take() {
                    m["caption"] = json!(c);
                }
                media.push(m);
            }
            let mut params = base.clone();
            params["media"] = Value::Array(media);
            out.push(Call {
                method: "sendMediaGroup",
                params,
                files,
            });
        }
        return out;
    }
    for (i, a) in attachments.iter().enumerate() {
        let (method, field) = single_method(a.kind);
        let mut params = base.clone();
        let mut files = Vec::new();
        match &a.source {
            AttachmentSource::Url(u) => params[field] = json!(u),
            AttachmentSource::Bytes(b) => {
                files.push((field.to_string(), file_name(a, i), mime(a), b.clone()))
            }
        }
        if let Some(c) = caption.take() {
            if a.kind != AttachmentKind::Sticker {
                params["caption"] = json!(c);
            }
        }
        out.push(Call {
            method,
            params,
            files,
        });
    }
    out
}

/// A `multipart/form-data` body: every text parameter (objects and arrays
/// as JSON, as the Bot API reads them), then the files. Returns the
/// content type (with its boundary) and the body.
pub fn multipart(params: &Value, files: &[(String, String, String, Vec<u8>)]) -> (String, Vec<u8>) {
    // A boundary that occurs in no part.
    let mut n: u64 = 0x5eed;
    let boundary = loop {
        let b = format!("switchboard-{n:016x}");
        let clash = files
            .iter()
            .any(|f| f.3.windows(b.len()).any(|w| w == b.as_bytes()))
            || params.to_string().contains(&b);
        if !clash {
            break b;
        }
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
    };
    let mut body = Vec::new();
    if let Some(o) = params.as_object() {
        for (k, v) in o {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{text}\r\n")
                    .as_bytes(),
            );
        }
    }
    for (field, name, mime, bytes) in files {
        let name = name.replace(['"', '\r', '\n'], "_");
        // The gateway checks `contentType`; a type that could end the line
        // anyway goes as bytes of no stated type, not as headers or parts.
        let mime = if mime.contains(|c: char| c.is_control()) {
            "application/octet-stream"
        } else {
            mime.as_str()
        };
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: {mime}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The attachments of a received message (metadata; for a photo, its
/// largest size).
pub fn inbound(m: &Value) -> Vec<InboundAttachment> {
    let mut out = Vec::new();
    let meta = |kind: AttachmentKind, f: &Value| InboundAttachment {
        kind,
        mime_type: f["mime_type"].as_str().map(str::to_string),
        file_name: f["file_name"].as_str().map(str::to_string),
        size: f["file_size"].as_u64(),
        file_id: f["file_id"].as_str().map(str::to_string),
        url: None,
    };
    if let Some(sizes) = m["photo"].as_array() {
        if let Some(largest) = sizes
            .iter()
            .max_by_key(|p| p["file_size"].as_u64().unwrap_or(0))
        {
            out.push(meta(AttachmentKind::Image, largest));
        }
    }
    for (key, kind) in [
        ("animation", AttachmentKind::Animation),
        ("video", AttachmentKind::Video),
        ("video_note", AttachmentKind::Video),
        ("audio", AttachmentKind::Audio),
        ("voice", AttachmentKind::Voice),
        ("sticker", AttachmentKind::Sticker),
    ] {
        if m[key].is_object() {
            out.push(meta(kind, &m[key]));
        }
    }
    // An animation also comes as a `document`; report it once.
    if m["document"].is_object() && !m["animation"].is_object() {
        out.push(meta(AttachmentKind::Document, &m["document"]));
    }
    out
}

/// The Bot API call for an action.
pub fn action_call(
    action: MessageAction,
    numeric: impl Fn(&str, &str) -> Result<i64, ChannelError>,
) -> Result<(&'static str, Value), ChannelError> {
    Ok(match action {
        MessageAction::React(r) => {
            let reaction = if r.remove {
                json!([])
            } else {
                json!([{"type": "emoji", "emoji": r.emoji}])
            };
            (
                "setMessageReaction",
                json!({"chat_id": r.target.chat_id, "message_id": numeric("messageId", &r.target.message_id)?, "reaction": reaction}),
            )
        }
        MessageAction::Edit(e) => (
            "editMessageText",
            json!({"chat_id": e.target.chat_id, "message_id": numeric("messageId", &e.target.message_id)?, "text": e.text}),
        ),
        MessageAction::Delete(t) => (
            "deleteMessage",
            json!({"chat_id": t.chat_id, "message_id": numeric("messageId", &t.message_id)?}),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(kind: AttachmentKind, u: &str) -> OutboundAttachment {
        OutboundAttachment {
            kind,
            mime_type: None,
            file_name: None,
            source: AttachmentSource::Url(u.into()),
        }
    }

    #[test]
    fn one_family_goes_as_a_group_and_mixed_ones_one_by_one() {
        let base = json!({"chat_id": "1"});
        let photos = vec![
            url(AttachmentKind::Image, "a"),
            url(AttachmentKind::Video, "b"),
        ];
        let c = calls(&base, &photos, Some("hi"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].method, "sendMediaGroup");
        assert_eq!(
            c[0].params["media"],
            json!([{"type": "photo", "media": "a", "caption": "hi"}, {"type": "video", "media": "b"}])
        );
        let mixed = vec![
            url(AttachmentKind::Image, "a"),
            url(AttachmentKind::Voice, "v"),
        ];
        let c = calls(&base, &mixed, Some("hi"));
        assert_eq!(
            c.iter().map(|c| c.method).collect::<Vec<_>>(),
            ["sendPhoto", "sendVoice"]
        );
        assert_eq!(c[0].params["caption"], "hi");
        assert!(c[1].params.get("caption").is_none());
        let many: Vec<_> = (0..12)
            .map(|i| url(AttachmentKind::Document, &i.to_string()))
            .collect();
        assert_eq!(calls(&base, &many, None).len(), 2, "10 at most per group");
    }

    #[test]
    fn multipart_carries_fields_and_files() {
        let (ct, body) = multipart(
            &json!({"chat_id": "1", "media": [{"type": "photo"}]}),
            &[(
                "file0".into(),
                "a\"b.png".into(),
                "image/png".into(),
                vec![0, 255],
            )],
        );
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("name=\"chat_id\"\r\n\r\n1\r\n"), "{text}");
        assert!(text.contains(r#"[{"type":"photo"}]"#), "{text}");
        assert!(
            text.contains("filename=\"a_b.png\"\r\nContent-Type: image/png"),
            "{text}"
        );
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }

    #[test]
    fn a_content_type_cannot_add_parts() {
        let (ct, body) = multipart(
            &json!({"chat_id": "1"}),
            &[(
                "file0".into(),
                "a.pdf".into(),
                "application/pdf\r\n\r\nx\r\n--switchboard-0000000000005eed\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n-999".into(),
                vec![1],
            )],
        );
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(
            text.matches(&format!("--{boundary}\r\n")).count(),
            2,
            "{text}"
        );
        assert!(!text.contains("-999"), "{text}");
        assert!(
            text.contains("Content-Type: application/octet-stream\r\n"),
            "{text}"
        );
    }
}
