// Swagger UI over this API's own OpenAPI document (an external file: the page's CSP has no inline script).
"use strict";
window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // No call to the public validator: the page talks to its own origin only.
  validatorUrl: null,
  persistAuthorization: false,
});
