import Foundation
import HTTPTypes
import Hummingbird
import LoRA

/// A failure answered with OpenAI's error object:
/// `{"error": {"message", "type", "param", "code"}}` and an HTTP status.
/// Every handler failure becomes one of these (never a dropped connection).
struct APIError: Error, Sendable {
    var status: HTTPResponse.Status
    var message: String
    var type: String
    var param: String?
    var code: String?
    /// Seconds for a Retry-After header (429, 503).
    var retryAfter: Int?

    init(
        _ status: HTTPResponse.Status, _ message: String, type: String = "invalid_request_error", param: String? = nil,
        code: String? = nil, retryAfter: Int? = nil
    ) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retryAfter = retryAfter
    }

    /// A bad value of a request field (400).
    static func invalid(_ param: String, _ message: String) -> APIError {
        APIError(.badRequest, message, param: param, code: "invalid_value")
    }

    static func modelNotFound(_ name: String, param: String = "model") -> APIError {
        APIError(.notFound, "The model `\(name)` does not exist.", param: param, code: "model_not_found")
    }

    var json: JSONValue {
        .object(
            JSONObject([
                (
                    "error",
                    .object(
                        JSONObject([
                            ("message", .string(message)), ("type", .string(type)),
                            ("param", param.map { .string($0) } ?? .null), ("code", code.map { .string($0) } ?? .null),
                        ]))
                )
            ]))
    }

    var response: Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        if status == .unauthorized { headers[.wwwAuthenticate] = "Bearer" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: JSON.compact(json) + "\n")))
    }
}

/// A JSON response with status 200 (or another).
func jsonResponse(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
    Response(
        status: status, headers: [.contentType: "application/json"],
        body: .init(byteBuffer: ByteBuffer(string: JSON.compact(value) + "\n")))
}

/// Turns whatever a handler throws into an OpenAI error response: our
/// APIErrors as they are, Hummingbird's HTTP errors (unknown route, body
/// too large) with their status, anything else as a 500 with its text.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            return e.response
        } catch let e as HTTPResponseError {
            let status = e.status
            let message: String
            switch status {
            case .notFound: message = "no route for \(request.method) \(request.uri.path)"
            case .methodNotAllowed: message = "\(request.method) is not allowed on \(request.uri.path)"
            case .contentTooLarge: message = "the request body is too large"
            default: message = status.reasonPhrase
            }
            let type = status.code >= 500 ? "server_error" : "invalid_request_error"
            return APIError(status, message, type: type, code: status.code == 404 ? "not_found" : nil).response
        } catch {
            return APIError(.internalServerError, "\(error)", type: "server_error").response
        }
    }
}
