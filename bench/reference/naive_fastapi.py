"""The naive FastAPI app: what a first FastAPI port of the seed looks like.

Echo on /ws with an "Echo: " prefix, and /ws/broadcast looping over a plain list of clients with
`await send_text` (so one slow client stalls everyone). No auth, no limits, no queues. The
benchmark runs it under plain `uvicorn` (default WebSocket implementation and options) to show
where ws-service stands against the obvious FastAPI version as well as against Node's `ws`.

Run: uvicorn naive_fastapi:app --app-dir bench/reference --port 8001 --log-level warning
"""

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
clients: list[WebSocket] = []


@app.get("/")
async def index() -> str:
    return "WebSocket Server is running"


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            await websocket.send_text(f"Echo: {message}")
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/broadcast")
async def broadcast(websocket: WebSocket) -> None:
    await websocket.accept()
    clients.append(websocket)
    try:
        while True:
            message = await websocket.receive_text()
            for client in list(clients):
                try:
                    await client.send_text(message)
                except Exception:
                    pass
    except WebSocketDisconnect:
        pass
    finally:
        clients.remove(websocket)
