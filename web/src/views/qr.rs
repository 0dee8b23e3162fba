//! QR codes as inline SVG, so a phone can point the mobile app at a gateway
//! URL without typing it. Drawn from the code's modules, no image files.

use maud::{Markup, html};
use qrcode::{Color, QrCode};

/// The SVG, or nothing for text too long to encode.
pub fn svg(text: &str) -> Option<Markup> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let width = code.width();
    let colors = code.to_colors();
    let mut d = String::new();
    for (i, c) in colors.iter().enumerate() {
        if *c == Color::Dark {
            // Quiet zone of 4 modules on each side.
            let (x, y) = (i % width + 4, i / width + 4);
            d.push_str(&format!("M{x} {y}h1v1h-1z"));
        }
    }
    let size = width + 8;
    Some(html! {
        svg.qr xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (size) " " (size) }
            role="img" aria-label={ "QR code of " (text) } shape-rendering="crispEdges" {
            rect width=(size) height=(size) fill="#fff" {}
            path d=(d) fill="#000" {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_becomes_an_svg_with_an_accessible_label() {
        let svg = svg("http://10.0.0.5:8080/erangel/").unwrap().into_string();
        assert!(svg.starts_with("<svg class=\"qr\""), "{svg}");
        assert!(svg.contains("aria-label=\"QR code of http://10.0.0.5:8080/erangel/\""));
        assert!(svg.contains("h1v1h-1z"));
    }
}
