import Foundation

/// One request's tokens as they come, for a caller that drives the engine
/// itself (as Python's `for piece in engine.submit(...)`): each `next()`
/// steps the engine, so every other request advances too, until this one
/// has a new token or has ended. The request's own `onToken` still runs
/// first. Another thread may step the engine meanwhile: the tokens it
/// produces wait in the stream.
public final class EngineTokenStream: Sendable {
    public let engine: Engine
    public let id: Int64
    private let buffer: TokenBuffer

    fileprivate init(engine: Engine, id: Int64, buffer: TokenBuffer) {
        self.engine = engine
        self.id = id
        self.buffer = buffer
    }

    /// The request's next token and its text piece; nil once it has ended
    /// and every token was returned. Errors: what `Engine.step` throws
    /// (`wrongState` while another thread is stepping: call again).
    public func next() throws -> (token: TokenID, piece: String)? {
        while true {
            if let t = buffer.pop() { return t }
            let s = try engine.state(id).state
            guard s == .queued || s == .running else { return buffer.pop() }
            _ = try engine.step()
        }
    }

    /// The request's result once it has ended (nil before).
    public var result: GenerationResult? { try? engine.state(id).result }
}

extension Engine {
    /// Submits a request and returns its token stream (see EngineTokenStream).
    public func submitStreaming(_ request: EngineRequest) throws -> EngineTokenStream {
        let buffer = TokenBuffer()
        var r = request
        let own = request.onToken
        r.onToken = { token, piece in
            buffer.push(token, piece)
            return own?(token, piece) ?? .continue
        }
        return EngineTokenStream(engine: self, id: try submit(r), buffer: buffer)
    }
}

/// The tokens a request produced and its stream has not returned yet.
private final class TokenBuffer: @unchecked Sendable {
    private let lock = NSLock()
    private var pending: [(token: TokenID, piece: String)] = []
    private var head = 0

    func push(_ token: TokenID, _ piece: String) {
        lock.lock()
        pending.append((token, piece))
        lock.unlock()
    }

    func pop() -> (token: TokenID, piece: String)? {
        lock.lock()
        defer { lock.unlock() }
        guard head < pending.count else { return nil }
        head += 1
        return pending[head - 1]
    }
}
