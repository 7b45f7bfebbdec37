import Foundation
import LoRA

/// Training progress on the terminal (a live bar fitted to the terminal's
/// width when stdout is a TTY, plain lines otherwise) and in a JSONL metrics
/// log that keeps the whole history across resumes.
final class ProgressPrinter {
    let isTTY = isatty(STDOUT_FILENO) != 0
    let log: FileHandle?
    let start = Date()
    /// Steps of this process (for the ETA) and where they started.
    private var firstStep: Int?
    private(set) var trainLoss: [(Int, Double)] = []
    private(set) var validationLoss: [(Int, Double)] = []

    /// `keepUpTo`: a resumed run keeps the log's records up to that step (the
    /// later ones are redone) and its curves; nil starts a new log.
    init(logPath: String?, keepUpTo: Int? = nil) throws {
        guard let logPath else { log = nil; return }
        var kept = ""
        if let keepUpTo, let old = try? String(contentsOfFile: logPath, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                guard case .object(let o)? = try? JSON.parse(Array(line.utf8)),
                    case .number(let s)? = o["step"], let step = Int(exactly: s.double), step <= keepUpTo
                else { continue }
                kept += line + "\n"
                if case .number(let l)? = o["loss"] { trainLoss.append((step, l.double)) }
                if case .number(let v)? = o["val_loss"] { validationLoss.append((step, v.double)) }
            }
        }
        guard FileManager.default.createFile(atPath: logPath, contents: Data(kept.utf8)),
            let h = FileHandle(forWritingAtPath: logPath)
        else { throw LoRAError.io(path: logPath, reason: "cannot write") }
        h.seekToEndOfFile()
        log = h
    }

    /// The terminal's width in columns (COLUMNS, else the TTY's, else 80).
    static func terminalWidth() -> Int {
        var ws = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_col > 0 { return Int(ws.ws_col) }
        if let c = ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init), c > 0 { return c }
        return 80
    }

    /// The validation loss before training (step 0).
    func recordValidation(step: Int, loss: Double) {
        validationLoss.append((step, loss))
        var o = JSONObject()
        o["step"] = .number(JSONNumber(step))
        o["val_loss"] = .number(JSONNumber(loss))
        log?.write(Data((JSON.compact(.object(o)) + "\n").utf8))
    }

    func report(_ r: TrainProgress) {
        trainLoss.append((r.step, r.loss))
        if let v = r.validationLoss { validationLoss.append((r.step, v)) }
        let elapsed = Date().timeIntervalSince(start)
        if firstStep == nil { firstStep = r.step - 1 }
        let done = r.step - (firstStep ?? 0)
        let eta = done > 0 ? elapsed / Double(done) * Double(r.maxSteps - r.step) : 0
        let line = String(
            format: "step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", r.step, r.maxSteps, r.loss, r.learningRate, r.tokensPerSecond)
        let val = r.validationLoss.map { String(format: "val_loss %.4f (ppl %.2f)", $0, Foundation.exp($0)) }
        if isTTY {
            let width = ProgressPrinter.terminalWidth()
            var text = "\r\u{1B}[2K" + ProgressPrinter.barLine(line, eta: eta, step: r.step, maxSteps: r.maxSteps, width: width)
            // A validation result stays on its own line under the bar's last state.
            if let val { text += "\n" + String(("  step \(r.step): " + val).prefix(max(10, width - 1))) }
            if val != nil || r.step == r.maxSteps { text += "\n" }
            FileHandle.standardOutput.write(Data(text.utf8))
        } else {
            say(val.map { line + "  " + $0 } ?? line)
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

    /// One progress line of at most width - 1 characters (the last column
    /// would make some terminals wrap): the bar shrinks first, then goes,
    /// then the text is cut.
    static func barLine(_ text: String, eta: Double, step: Int, maxSteps: Int, width: Int) -> String {
        let room = max(10, width - 1)
        let tail = "\(text)  ETA \(formatDuration(eta))"
        let barWidth = min(24, room - tail.count - 3)
        if barWidth >= 5 {
            let filled = Int(Double(barWidth) * Double(step) / Double(max(1, maxSteps)))
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: barWidth - filled)
            return "[\(bar)] \(tail)"
        }
        return tail.count <= room ? tail : String(tail.prefix(room))
    }

    func finish() { try? log?.synchronize() }
}

func formatDuration(_ s: Double) -> String {
    // ETAs of absurd runs (max_steps near 2^31 at seconds a step) stay printable.
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(min(s, 99 * 3600 * 24 * 365).rounded())
    return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
}

/// Tick values for an axis: 1, 2 or 5 × 10^k apart, covering lo...hi.
func niceTicks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
    let span = max(hi - lo, 1e-9)
    let raw = span / Double(max(1, count))
    let mag = pow(10, floor(log10(raw)))
    let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
    var ticks: [Double] = []
    var v = ceil(lo / step - 1e-9) * step
    while v <= hi + step * 1e-9 { ticks.append(abs(v) < step * 1e-9 ? 0 : v); v += step }
    return ticks
}

/// A tick label without float noise: 2.2 not 2.2000000000000002, 1e-3 as 0.001.
func tickLabel(_ v: Double) -> String {
    if v == v.rounded(), abs(v) < 1e9 { return String(Int(v)) }
    var s = String(format: "%.6f", v)
    while s.hasSuffix("0") { s.removeLast() }
    return s
}

/// A loss curve as SVG: training (and validation) loss against step, with
/// labelled axes, round ticks, the legend above the plot area (never over
/// the data), and a log-scale loss axis when the loss spans more than a decade.
func lossCurveSVG(train allTrain: [(Int, Double)], validation: [(Int, Double)], title: String) -> String {
    // At most ~2,000 points per curve (a long run would make a huge file): every k-th step, and the last.
    let stride = max(1, allTrain.count / 2000)
    var train = Swift.stride(from: 0, to: allTrain.count, by: stride).map { allTrain[$0] }
    if let last = allTrain.last, train.last?.0 != last.0 { train.append(last) }
    let w = 720.0
    let h = 420.0
    let left = 72.0
    let right = 24.0
    let top = 56.0
    let bottom = 52.0
    let all = (train + validation).filter { $0.1.isFinite }
    let header = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(Int(left))" y="20" font-size="14">\(xmlEscape(title))</text>

        """
    guard let maxStep = all.map(\.0).max(), let lo = all.map(\.1).min(), let hi = all.map(\.1).max() else {
        return header + "<text x=\"\(Int(left))\" y=\"\(Int(h / 2))\">no data</text>\n</svg>\n"
    }
    let logScale = lo > 0 && hi / lo > 10
    // y axis, in data units (log10 of the loss on a log scale).
    let yTicks: [Double]
    let yLo: Double
    let yHi: Double
    if logScale {
        yLo = floor(log10(lo)); yHi = ceil(log10(hi))
        var t: [Double] = []
        for e in Int(yLo)...Int(yHi) { for m in [1.0, 2, 5] { let v = m * pow(10, Double(e)); if log10(v) <= yHi + 1e-9 { t.append(v) } } }
        yTicks = t.filter { log10($0) >= yLo - 1e-9 }
    } else {
        let pad = max((hi - lo) * 0.05, 1e-3)
        let t = niceTicks(max(0, lo - pad), hi + pad)
        yTicks = t
        yLo = min(t.first ?? lo, lo); yHi = max(t.last ?? hi, hi)
    }
    let xTicks = niceTicks(0, Double(max(1, maxStep)), count: 6).filter { $0 <= Double(max(1, maxStep)) + 1e-9 }
    let xMax = Double(max(1, maxStep))
    func x(_ s: Double) -> Double { left + (w - left - right) * s / xMax }
    func y(_ v: Double) -> Double {
        let u = logScale ? log10(v) : v
        return top + (h - top - bottom) * (1 - (u - yLo) / max(yHi - yLo, 1e-12))
    }
    func path(_ pts: [(Int, Double)]) -> String {
        pts.filter { $0.1.isFinite }.enumerated().map { i, p in String(format: "%@%.1f,%.1f", i == 0 ? "M" : "L", x(Double(p.0)), y(p.1)) }
            .joined(separator: " ")
    }
    var svg = header
    for t in yTicks {
        svg += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>", left, y(t), w - right, y(t))
        svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", left - 6, y(t) + 4, tickLabel(t))
    }
    for t in xTicks {
        svg += String(
            format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>", x(t), h - bottom, x(t), h - bottom + 5)
        svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%@</text>\n", x(t), h - bottom + 18, tickLabel(t))
    }
    svg += String(
        format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, h - bottom, w - right, h - bottom)
    svg += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, top, left, h - bottom)
    svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", left + (w - left - right) / 2, h - 10)
    let yLabel = logScale ? "loss (nats per token, log scale)" : "loss (nats per token)"
    svg += String(
        format: "<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">%@</text>\n",
        top + (h - top - bottom) / 2, yLabel)
    svg += "<path d=\"\(path(train))\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n"
    if !validation.isEmpty {
        svg += "<path d=\"\(path(validation))\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>\n"
        for p in validation where p.1.isFinite {
            svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", x(Double(p.0)), y(p.1))
        }
    }
    // Legend in the band between the title and the plot area.
    let ly = top - 14
    svg += String(
        format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#1f77b4\" stroke-width=\"2\"/>", w - right - 300, ly - 4,
        w - right - 280, ly - 4)
    svg += String(format: "<text x=\"%.1f\" y=\"%.1f\">training loss</text>\n", w - right - 274, ly)
    if !validation.isEmpty {
        svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>", w - right - 160, ly - 4)
        svg += String(format: "<text x=\"%.1f\" y=\"%.1f\">validation loss</text>\n", w - right - 150, ly)
    }
    svg += "</svg>\n"
    return svg
}

func xmlEscape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
}
