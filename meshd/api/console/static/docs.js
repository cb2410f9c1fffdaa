// Starts Swagger UI on the OpenAPI document served to console sessions (no inline script).
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({ url: "/docs/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
