//! The HTML report made self-contained.
//!
//! goose's HTML report draws its graphs with ECharts loaded from a public
//! CDN, so they stay blank wherever the page is opened without internet
//! access (an air-gapped cluster's bastion, a CI machine). After the run,
//! every HTML report is rewritten with the same ECharts version inline
//! (assets/echarts-5.2.2.min.js: the `echarts` npm package's
//! `dist/echarts.min.js`, Apache-2.0, its license header kept), so the
//! report is one file that shows its plots anywhere.

use std::path::Path;

/// ECharts as goose's report template references it (version 5.2.2).
const ECHARTS: &str = include_str!("../assets/echarts-5.2.2.min.js");
/// The end of goose's `<script src=".../echarts.min.js">` tag.
const SCRIPT_END: &str = "/echarts.min.js\"></script>";
const SCRIPT_START: &str = "<script src=\"";

/// `page` with its external ECharts script replaced by the library inline;
/// `None` if it has no such script (nothing to do).
pub fn inline_charts(page: &str) -> Option<String> {
    let end = page.find(SCRIPT_END)? + SCRIPT_END.len();
    let start = page[..end].rfind(SCRIPT_START)?;
    Some(format!("{}<script>{ECHARTS}</script>{}", &page[..start], &page[end..]))
}

/// Rewrites each `.html` file of `reports` with ECharts inline.
pub fn inline_charts_in_files(reports: &[String]) -> std::io::Result<()> {
    for report in reports.iter().map(Path::new) {
        if report.extension().and_then(|extension| extension.to_str()) != Some("html") {
            continue;
        }
        let page = std::fs::read_to_string(report)?;
        if let Some(inlined) = inline_charts(&page) {
            std::fs::write(report, inlined)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_external_echarts_script_becomes_the_library_inline() {
        let page = "<head><script src=\"https://example.invalid/npm/echarts@5.2.2/dist/echarts.min.js\"></script>\
                    <style></style></head><body>echarts.init(x)</body>";
        let inlined = inline_charts(page).expect("the page loads ECharts");
        assert!(!inlined.contains("<script src="), "no external script is left");
        assert!(inlined.starts_with("<head><script>"));
        assert!(inlined.ends_with("</script><style></style></head><body>echarts.init(x)</body>"));
        assert!(inlined.contains("Apache"), "the library keeps its license header");
        assert!(inlined.contains(ECHARTS), "the whole library is inline");
    }

    #[test]
    fn the_library_cannot_end_its_script_element_early() {
        assert!(!ECHARTS.contains("</script"), "`</script` inside the library would end the element");
    }

    #[test]
    fn a_page_without_the_script_is_left_alone() {
        assert_eq!(inline_charts("<html>no graphs</html>"), None);
    }
}
