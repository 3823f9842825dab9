"""`caregpt webui`: serve the web chat for an OpenAI-compatible API on this machine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from caregpt.chat.api import KEY_ENV_VARS, ChatApiError, normalize_base_url


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caregpt webui",
        allow_abbrev=False,
        description="A Gradio chat page (streaming, multi-turn, system prompt, sampling controls, retry / undo / "
        "clear, model and adapter picker, knowledge-base sources) for any OpenAI-compatible API.",
        epilog="Example:\n  caregpt webui --api-base http://127.0.0.1:8000/v1 --port 7860   # then open http://127.0.0.1:7860\n\n"
        "To run it inside Ray Serve next to the API, see caregpt.webui.serve_app and docs/clients.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--api-base", "--api_base", dest="api_base", required=True, metavar="URL",
                        help="Base URL of the chat API, e.g. http://127.0.0.1:8000/v1 (/v1 is added when missing).")
    parser.add_argument("--api-key", "--api_key", dest="api_key", metavar="KEY",
                        help=f"API key; default: ${' or $'.join(KEY_ENV_VARS)}. Never shown in the page or logs.")
    parser.add_argument("--model", metavar="NAME", help="Model / adapter selected at first; default: the first of /v1/models.")
    parser.add_argument("--system", metavar="TEXT", help="Initial system prompt (editable in the page).")
    parser.add_argument("--title", default="CareGPT medical chat", help="Page title.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on; 0.0.0.0 for every interface (default: 127.0.0.1).")
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on (default: 7860).")
    parser.add_argument("--share", type=_bool, default=False, metavar="{true,false}",
                        help="Open a public gradio.live tunnel (downloads Gradio's frpc client; off by default).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `caregpt webui` (also `python -m caregpt.webui`); blocks until Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(argv):  # say what to install before complaining about flags
        from caregpt.webui.app import prepare_gradio_env

        prepare_gradio_env()
    args = build_parser().parse_args(argv)
    try:
        normalize_base_url(args.api_base)
    except ChatApiError as exc:
        print(f"caregpt webui: error: {exc}", file=sys.stderr)
        return 2
    from caregpt.webui.app import build_ui, page_options

    demo = build_ui(args.api_base, args.api_key, model=args.model, system=args.system, title=args.title)
    if args.share:
        print("caregpt webui: --share true publishes this page through gradio.live (a third-party tunnel).", file=sys.stderr)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                    enable_monitoring=False, **page_options())
    except OSError as exc:  # port taken, interface unknown
        print(f"caregpt webui: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
