import Foundation
import LoRA

/// Training progress on the terminal (a live bar when stdout is a TTY, plain
/// lines otherwise) and in a JSONL metrics log.
final class ProgressPrinter {
    let isTTY = isatty(STDOUT_FILENO) != 0
    let log: FileHandle?
    let start = Date()
    private(set) var trainLoss: [(Int, Double)] = []
    private(set) var validationLoss: [(Int, Double)] = []

    init(logPath: String?) throws {
        if let logPath {
            FileManager.default.createFile(atPath: logPath, contents: nil)
            guard let h = FileHandle(forWritingAtPath: logPath) else { throw LoRAError.io(path: logPath, reason: "cannot write") }
            log = h
        } else { log = nil }
    }

    func report(_ r: TrainProgress) {
        trainLoss.append((r.step, r.loss))
        if let v = r.validationLoss { validationLoss.append((r.step, v)) }
        let elapsed = Date().timeIntervalSince(start)
        let eta = r.step > 0 ? elapsed / Double(r.step) * Double(r.maxSteps - r.step) : 0
        var line = String(format: "step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", r.step, r.maxSteps, r.loss, r.learningRate, r.tokensPerSecond)
        if let v = r.validationLoss { line += String(format: "  val_loss %.4f (ppl %.2f)", v, Foundation.exp(v)) }
        if isTTY {
            let width = 24
            let done = Int(Double(width) * Double(r.step) / Double(max(1, r.maxSteps)))
            let bar = String(repeating: "█", count: done) + String(repeating: "·", count: width - done)
            let text = "\r\u{1B}[2K[\(bar)] \(line)  ETA \(formatDuration(eta))"
            FileHandle.standardOutput.write(Data(text.utf8))
            if r.validationLoss != nil || r.step == r.maxSteps { FileHandle.standardOutput.write(Data("\n".utf8)) }
        } else {
            say(line)
        }
        if let log {
            var o = JSONObject()
            o["step"] = .number(JSONNumber(r.step))
            o["loss"] = .number(JSONNumber(r.loss))
            o["learning_rate"] = .number(JSONNumber(r.learningRate))
            o["grad_norm"] = .number(JSONNumber(r.gradNorm))
            o["tokens_per_second"] = .number(JSONNumber(r.tokensPerSecond))
            if let v = r.validationLoss { o["val_loss"] = .number(JSONNumber(v)) }
            o["elapsed_s"] = .number(JSONNumber(elapsed))
            log.write(Data((JSON.compact(.object(o)) + "\n").utf8))
        }
    }

    func finish() {}
}

func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
}

/// A loss curve as SVG: training (and validation) loss against step.
func lossCurveSVG(train: [(Int, Double)], validation: [(Int, Double)], title: String) -> String {
    let w = 640.0, h = 360.0, left = 60.0, right = 20.0, top = 30.0, bottom = 40.0
    let all = train + validation
    guard let maxStep = all.map(\.0).max(), let lo = all.map(\.1).min(), let hi = all.map(\.1).max() else { return "" }
    let span = max(hi - lo, 1e-6)
    func x(_ s: Int) -> Double { left + (w - left - right) * Double(s) / Double(max(1, maxStep)) }
    func y(_ v: Double) -> Double { top + (h - top - bottom) * (1 - (v - lo) / span) }
    func path(_ pts: [(Int, Double)]) -> String {
        pts.enumerated().map { i, p in String(format: "%@%.1f,%.1f", i == 0 ? "M" : "L", x(p.0), y(p.1)) }.joined(separator: " ")
    }
    var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(Int(left))" y="18" font-size="14">\(title)</text>
        <line x1="\(left)" y1="\(h - bottom)" x2="\(w - right)" y2="\(h - bottom)" stroke="black"/>
        <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(h - bottom)" stroke="black"/>

        """
    for k in 0...4 {
        let v = lo + span * Double(k) / 4
        svg += String(format: "<text x=\"5\" y=\"%.1f\">%.3f</text><line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                      y(v) + 4, v, left, y(v), w - right, y(v))
    }
    svg += String(format: "<text x=\"%.1f\" y=\"%.1f\">step</text><text x=\"%.1f\" y=\"%.1f\">%d</text>\n",
                  (w - left) / 2 + left, h - 8, w - right - 30, h - bottom + 16, maxStep)
    svg += "<path d=\"\(path(train))\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n"
    if !validation.isEmpty {
        svg += "<path d=\"\(path(validation))\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>\n"
        for p in validation { svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", x(p.0), y(p.1)) }
    }
    svg += "<text x=\"\(Int(w - 200))\" y=\"\(Int(top + 10))\" fill=\"#1f77b4\">training loss</text>\n"
    if !validation.isEmpty { svg += "<text x=\"\(Int(w - 200))\" y=\"\(Int(top + 26))\" fill=\"#d62728\">validation loss</text>\n" }
    svg += "</svg>\n"
    return svg
}
